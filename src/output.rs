//! Output layout (`{root}/embeddings/{M}/{D}/{S}/shard-{i:05d}.parquet`, `{root}/indexes/{M}/{D}/manifest-{S}.json`)
//! and durable file writes (tmp -> fsync -> rename -> fsync dir).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Keeps alphanumerics, '-' and '_'; '/' becomes "__", other characters '-'; runs of "--" collapse; '-' is
/// trimmed from both ends; an empty result is "unnamed". (The Python original's rule.)
pub fn sanitize(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => s.push(c),
            '/' => s.push_str("__"),
            _ => s.push('-'),
        }
    }
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-');
    if s.is_empty() { "unnamed".into() } else { s.to_string() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputPaths {
    pub root: PathBuf,
    /// `embeddings/{M}/{D}/{S}` under root.
    pub shard_dir: PathBuf,
    pub manifest: PathBuf,
    pub run_summary: PathBuf,
    /// Shard paths in the manifest are relative to the manifest's folder; this is that prefix.
    pub shard_prefix: String,
}

impl OutputPaths {
    pub fn new(root: &Path, model: &str, dataset: &str, subset: Option<&str>, split: &str) -> Self {
        let m = sanitize(model);
        let d = match subset {
            Some(s) => sanitize(&format!("{dataset}__{s}")),
            None => sanitize(dataset),
        };
        let s = sanitize(split);
        let index_dir = root.join("indexes").join(&m).join(&d);
        OutputPaths {
            root: root.to_path_buf(),
            shard_dir: root.join("embeddings").join(&m).join(&d).join(&s),
            manifest: index_dir.join(format!("manifest-{s}.json")),
            run_summary: index_dir.join(format!("run-{s}.json")),
            shard_prefix: format!("../../../embeddings/{m}/{d}/{s}"),
        }
    }

    pub fn shard_name(index: u64) -> String {
        format!("shard-{index:05}.parquet")
    }

    pub fn shard_path(&self, index: u64) -> PathBuf {
        self.shard_dir.join(Self::shard_name(index))
    }

    /// The shard's path as the manifest records it.
    pub fn shard_entry_path(&self, index: u64) -> String {
        format!("{}/{}", self.shard_prefix, Self::shard_name(index))
    }
}

/// Default dataset name for a local path: the file stem, the folder name, or a glob's last plain folder.
pub fn dataset_name(dataset: &str) -> String {
    let plain: PathBuf = Path::new(dataset)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect();
    let p = std::fs::canonicalize(&plain).unwrap_or(plain);
    let name = if p.is_file() { p.file_stem() } else { p.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into())
}

/// Writes `bytes` to `path` durably: a temporary file in the same folder, fsync, rename, fsync the folder.
/// Readers see the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `.` and `..` components without touching the file system.
pub fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The output root of a manifest at `{root}/indexes/{M}/{D}/manifest-{S}.json`.
pub fn root_of_manifest(manifest: &Path) -> PathBuf {
    normalize_lexically(&manifest.join("../../../.."))
}

/// A shard path from a manifest, resolved; refused if absolute or if it leaves `{root}/embeddings`.
pub fn resolve_shard_path(manifest: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(format!("shard path {rel} is absolute; shard paths must be relative to the manifest"));
    }
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let resolved = normalize_lexically(&dir.join(p));
    let inside = root_of_manifest(manifest).join("embeddings");
    if !resolved.starts_with(&inside) {
        return Err(format!("shard path {rel} points outside the output root ({})", inside.display()));
    }
    Ok(resolved)
}

/// Checks that a folder can be created and written to (creates it).
pub fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    File::create(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_follows_the_original_rules() {
        assert_eq!(sanitize("Qwen/Qwen3-Embedding-0.6B"), "Qwen__Qwen3-Embedding-0-6B");
        assert_eq!(sanitize("a  b!!c"), "a-b-c");
        assert_eq!(sanitize("--x--"), "x");
        assert_eq!(sanitize("..."), "unnamed");
        assert_eq!(sanitize("HuggingFaceTB/smoltalk__all"), "HuggingFaceTB__smoltalk__all");
    }

    #[test]
    fn layout_paths() {
        let o = OutputPaths::new(Path::new("/o"), "all-MiniLM-L6-v2", "sample", Some("en"), "train");
        assert_eq!(o.shard_path(3), Path::new("/o/embeddings/all-MiniLM-L6-v2/sample__en/train/shard-00003.parquet"));
        assert_eq!(o.manifest, Path::new("/o/indexes/all-MiniLM-L6-v2/sample__en/manifest-train.json"));
        // The manifest-relative shard path resolves to the shard.
        let resolved = o.manifest.parent().unwrap().join(o.shard_entry_path(3));
        assert_eq!(std::fs::canonicalize(resolved.parent().unwrap()).ok(), None); // nothing on disk yet
        let norm: PathBuf = resolved.components().fold(PathBuf::new(), |mut acc, c| {
            if c == std::path::Component::ParentDir { acc.pop(); } else { acc.push(c); }
            acc
        });
        assert_eq!(norm, o.shard_path(3));
    }

    #[test]
    fn shard_paths_must_stay_inside_the_output() {
        let m = Path::new("/o/indexes/M/D/manifest-train.json");
        assert_eq!(root_of_manifest(m), Path::new("/o"));
        assert_eq!(resolve_shard_path(m, "../../../embeddings/M/D/train/shard-00000.parquet").unwrap(), Path::new("/o/embeddings/M/D/train/shard-00000.parquet"));
        assert!(resolve_shard_path(m, "/etc/passwd").unwrap_err().contains("absolute"));
        assert!(resolve_shard_path(m, "../../../../etc/passwd").unwrap_err().contains("outside"));
        assert!(resolve_shard_path(m, "../../../indexes/M/D/manifest-train.json").unwrap_err().contains("outside"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dataset_names_from_paths() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("my data.jsonl");
        std::fs::write(&f, "").unwrap();
        assert_eq!(dataset_name(f.to_str().unwrap()), "my data");
        let sub = d.path().join("corpus");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(dataset_name(&format!("{}/*.parquet", sub.display())), "corpus");
    }
}
