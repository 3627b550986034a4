//! The dataset card: `README.md` at the output root, with the YAML front matter the Hugging Face Hub and
//! `datasets` read, mapping each model and dataset of the root to a config of its own (so that
//! `load_dataset(root, "{M}--{D}")` loads one model's embeddings, and `load_dataset(root)` asks which one
//! instead of merging them), and a table of what each holds and how to load it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::Manifest;

/// The card's first line after the front matter: a card without it (a person's own README.md) is left alone.
const MARK: &str = "<!-- written by chatspace-mpi: rewritten when a run completes; edits are lost -->";

/// One output (a manifest) as the card shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The layout's folder names: `embeddings/{m}/{d}/{s}`.
    pub m: String,
    pub d: String,
    pub s: String,
    pub model: String,
    pub dataset: String,
    pub rows: u64,
    pub dim: usize,
    pub dtype: String,
    pub status: String,
}

impl Entry {
    pub fn config(&self) -> String {
        format!("{}--{}", self.m, self.d)
    }
}

/// The outputs under `root` (every `indexes/{M}/{D}/manifest-{S}.json` that reads).
pub fn entries(root: &Path) -> Vec<Entry> {
    let Ok(manifests) = crate::inspect::manifests_in(&root.join("indexes")) else { return Vec::new() };
    let mut out = Vec::new();
    for path in manifests {
        let (Some(d), Some(m)) = (path.parent(), path.parent().and_then(Path::parent)) else { continue };
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let s = path.file_stem().map(|n| n.to_string_lossy().trim_start_matches("manifest-").to_string());
        let (Some(m), Some(d), Some(s)) = (name(m), name(d), s) else { continue };
        match Manifest::read(&path) {
            Ok(man) => out.push(Entry {
                m,
                d,
                s,
                model: man.model.clone(),
                dataset: match &man.subset {
                    Some(sub) => format!("{} ({sub})", man.dataset),
                    None => man.dataset.clone(),
                },
                rows: man.rows_embedded,
                dim: man.embedding_dim,
                dtype: man.fingerprint.precision.name().to_string(),
                status: crate::inspect::status_name(man.status),
            }),
            Err(e) => log::warn!("dataset card: {} left out: {e}", path.display()),
        }
    }
    out
}

/// A YAML string: JSON's quoting is valid YAML.
fn yaml(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The card's text for these outputs.
pub fn render(root_name: &str, entries: &[Entry]) -> String {
    let mut configs: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        configs.entry(e.config()).or_default().push(e);
    }
    let mut o = String::from("---\nconfigs:\n");
    for (name, es) in &configs {
        o += &format!("- config_name: {}\n  data_files:\n", yaml(name));
        for e in es {
            o += &format!("  - split: {}\n    path: {}\n", yaml(&e.s), yaml(&format!("embeddings/{}/{}/{}/*.parquet", e.m, e.d, e.s)));
        }
    }
    o += "tags:\n- embeddings\n- chatspace-mpi\n---\n";
    o += MARK;
    o += &format!("\n\n# {root_name}: sentence embeddings\n\n");
    o += &format!(
        "Made by {} from the datasets below: Parquet shards with `row_id` (the \
           row's position in the input), `text` (what was embedded), `embedding` (a fixed-size list in the table's precision: float32 or float16; int8/uint8 buckets between \
           the calibration ranges the shards' metadata holds; binary/ubinary bits packed 8 to a byte) and the source columns. \
           Each model and dataset is a config of its own; splits are the input's.\n\n",
        crate::manifest::TOOL
    );
    o += "| config | split | model | dataset | rows | dim | precision | status |\n|---|---|---|---|---|---|---|---|\n";
    for es in configs.values() {
        for e in es {
            o += &format!(
                "| `{}` | `{}` | {} | {} | {} | {} | {} | {} |\n",
                e.config(),
                e.s,
                e.model.replace('|', "\\|"),
                e.dataset.replace('|', "\\|"),
                e.rows,
                e.dim,
                e.dtype,
                e.status
            );
        }
    }
    if let Some(e) = entries.first() {
        o += &format!(
            "\n## Loading\n\n```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/{root_name}\", \"{}\", split=\"{}\")\n```\n\n\
             Rows of a shard are sorted by `row_id`, but a resumed run may commit shards out of order: sort by `row_id` \
             when the input's order matters. Each shard's Parquet metadata holds the run's settings (`chatspace.*` keys).\n",
            e.config(),
            e.s
        );
    }
    o
}

/// Writes (or rewrites) the card at `root/README.md`, unless a README.md there is not one of ours.
pub fn write(root: &Path) -> std::io::Result<PathBuf> {
    let path = root.join("README.md");
    if let Ok(existing) = crate::output::read_regular(&path, 16 << 20) {
        if !String::from_utf8_lossy(&existing).contains(MARK) {
            return Err(std::io::Error::other(format!("{} exists and was not written by chatspace-mpi: left as it is", path.display())));
        }
    }
    let name = crate::plan::absolute(root).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "embeddings".into());
    crate::output::write_atomic(&path, render(&name, &entries(root)).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(m: &str, d: &str, s: &str) -> Entry {
        Entry {
            m: m.into(),
            d: d.into(),
            s: s.into(),
            model: m.into(),
            dataset: d.into(),
            rows: 10,
            dim: 384,
            dtype: "float32".into(),
            status: "complete".into(),
        }
    }

    #[test]
    fn each_model_and_dataset_is_a_config_with_its_splits() {
        let card = render("out", &[entry("a", "d", "train"), entry("a", "d", "test"), entry("b", "d", "train")]);
        let front = card.split("---\n").nth(1).unwrap();
        assert!(
            front.contains(
                "- config_name: \"a--d\"\n  data_files:\n  - split: \"train\"\n    path: \"embeddings/a/d/train/*.parquet\"\n  - split: \"test\""
            ),
            "{front}"
        );
        assert!(front.contains("- config_name: \"b--d\""), "{front}");
        assert!(card.contains(MARK) && card.contains("| `b--d` | `train` | b | d | 10 | 384 | float32 | complete |"), "{card}");
        assert!(card.contains("load_dataset(\"path/to/out\", \"a--d\", split=\"train\")"), "{card}");
    }

    #[test]
    fn a_readme_of_someone_else_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.md"), "my notes").unwrap();
        assert!(write(dir.path()).unwrap_err().to_string().contains("not written by chatspace-mpi"));
        assert_eq!(std::fs::read_to_string(dir.path().join("README.md")).unwrap(), "my notes");
        std::fs::remove_file(dir.path().join("README.md")).unwrap();
        write(dir.path()).unwrap();
        assert!(write(dir.path()).is_ok(), "ours is rewritten");
    }
}
