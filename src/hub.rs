//! Hugging Face Hub datasets and models through hf-hub: a repo id (and revision) becomes files in the HF cache,
//! downloaded by rank 0 unless offline (`HF_HUB_OFFLINE=1`), where a populated cache is read directly.
//! Honours HF_HOME / HF_HUB_CACHE and HF_TOKEN (never logged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{repo}: not in the HF cache {cache} (offline: HF_HUB_OFFLINE is set){hint}")]
    NotCached { repo: String, cache: String, hint: String },
    #[error("{repo}: {message}")]
    Hub { repo: String, message: String },
    #[error("{repo}: no Parquet files for {what}; available: {available}")]
    NoSplit { repo: String, what: String, available: String },
    #[error("{repo}: cache: {message}")]
    Io { repo: String, message: String },
}

/// A repo at one commit, as files on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub repo: String,
    /// The commit sha the revision resolved to.
    pub sha: String,
    /// `{cache}/{datasets|models}--org--name/snapshots/{sha}`.
    pub dir: PathBuf,
    /// Repo-relative paths of the files (those present in the cache, or listed by the Hub).
    pub files: Vec<String>,
}

/// `org/name`, `org/name@revision`, `hf://org/name` or `hf://datasets/org/name`: (repo id, revision).
pub fn parse_repo_id(spec: &str) -> Option<(String, String)> {
    let s = spec.strip_prefix("hf://").map(|s| s.strip_prefix("datasets/").unwrap_or(s)).unwrap_or(spec);
    let (id, rev) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
        Some(_) => return None,
        None => (s, "main".to_string()),
    };
    let parts: Vec<&str> = id.split('/').collect();
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.');
    (parts.len() == 2 && parts.iter().all(|p| ok(p))).then(|| (id.to_string(), rev))
}

/// Whether a `--dataset`/`--model` that does not exist is still meant as a local path, not a Hub repo: it is
/// absolute or starts with `.` or `~`, or its first folder exists here (`models/nope` beside a `models/`
/// folder is a mistyped local path). `hf://org/name` always means the Hub.
pub fn looks_local(spec: &str) -> bool {
    if spec.starts_with("hf://") {
        return false;
    }
    let p = std::path::Path::new(spec);
    let first = p.components().next().map(|c| PathBuf::from(c.as_os_str()));
    spec.starts_with(['/', '.', '~']) || (p.components().count() > 1 && first.is_some_and(|f| f.is_dir()))
}

/// What a `--dataset`/`--model` that is not on disk names: `Ok(Some((repo, revision)))` a Hub repo,
/// `Ok(None)` a local path (not a repo id, or `local_looking` by its form), `Err(repo)` a local path that
/// would also parse as the repo `repo` (see [`looks_local`]): the caller's error names the `hf://` form.
pub fn hub_repo(spec: &str, local_looking: bool) -> Result<Option<(String, String)>, String> {
    match parse_repo_id(spec) {
        Some(_) if local_looking => Ok(None),
        Some((id, _)) if looks_local(spec) => Err(id),
        repo => Ok(repo),
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    hf_hub::Cache::from_env().path().clone()
}

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot of `repo` at `revision` already in the cache.
pub fn cached(cache: &Path, repo: &Repo) -> Result<Snapshot, HubError> {
    let id = repo_id(repo);
    let root = cache.join(repo.folder_name());
    let sha = if is_sha(repo.revision()) {
        repo.revision().to_string()
    } else {
        let refs = root.join("refs").join(repo.revision());
        std::fs::read_to_string(&refs).map(|s| s.trim().to_string()).map_err(|_| HubError::NotCached {
            repo: id.clone(),
            cache: cache.display().to_string(),
            hint: format!(" (no {})", refs.display()),
        })?
    };
    let dir = root.join("snapshots").join(&sha);
    let mut files = Vec::new();
    walk(&dir, &dir, &mut files).map_err(|e| HubError::Io { repo: id.clone(), message: format!("{}: {e}", dir.display()) })?;
    files.sort();
    Ok(Snapshot { repo: id, sha, dir, files })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn repo_id(repo: &Repo) -> String {
    let f = repo.folder_name();
    f.split_once("--").map(|(_, rest)| rest.replacen("--", "/", 1)).unwrap_or(f)
}

/// Attempts after a failed file download (hf-hub waits 300 ms, doubling up to 10 s, and resumes the partial
/// file); `CHATSPACE_HUB_RETRIES` overrides it. hf-hub's own default is none: one dropped connection failed a job.
const HUB_RETRIES: usize = 5;

fn retries() -> usize {
    std::env::var("CHATSPACE_HUB_RETRIES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(HUB_RETRIES)
}

fn api() -> Result<hf_hub::api::sync::Api, String> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut b = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache_dir())
        .with_retries(retries())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if token.is_some() {
        b = b.with_token(token);
    }
    b.build().map_err(|e| e.to_string())
}

/// Lists the repo on the Hub (resolving the revision to a sha), or reads it from the cache when offline.
fn listing(kind: RepoType, id: &str, revision: &str) -> Result<Snapshot, HubError> {
    let repo = Repo::with_revision(id.to_string(), kind, revision.to_string());
    let cache = cache_dir();
    if offline() {
        return cached(&cache, &repo);
    }
    let info = api().and_then(|a| a.repo(repo.clone()).info().map_err(|e| e.to_string())).map_err(|message| HubError::Hub {
        repo: id.to_string(),
        message: format!("cannot list revision {revision}: {message} (set HF_HUB_OFFLINE=1 to use the cache only)"),
    })?;
    let dir = cache.join(repo.folder_name()).join("snapshots").join(&info.sha);
    Ok(Snapshot { repo: id.to_string(), sha: info.sha, dir, files: info.siblings.into_iter().map(|s| s.rfilename).collect() })
}

/// Makes sure `files` of the snapshot are in the cache (downloads them unless offline); returns their paths.
fn fetch(kind: RepoType, snap: &Snapshot, files: &[String]) -> Result<Vec<PathBuf>, HubError> {
    if offline() {
        return Ok(files.iter().map(|f| snap.dir.join(f)).collect());
    }
    let api = api().map_err(|message| HubError::Hub { repo: snap.repo.clone(), message })?;
    let repo = api.repo(Repo::with_revision(snap.repo.clone(), kind, snap.sha.clone()));
    files.iter().map(|f| repo.get(f).map_err(|e| HubError::Hub { repo: snap.repo.clone(), message: format!("downloading {f}: {e}") })).collect()
}

/// Parquet files of a dataset repo grouped by (subset, split), from the Hub's layouts: `data/{split}-*.parquet`,
/// `data/{subset}/{split}-*.parquet`, `{subset}/{split}-*.parquet`, `{subset}/{split}/*.parquet` (the
/// `refs/convert/parquet` layout, `partial-{split}` included), `{split}/*.parquet`.
pub fn index_parquet(files: &[String]) -> BTreeMap<(Option<String>, String), Vec<String>> {
    let mut out: BTreeMap<(Option<String>, String), Vec<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.ends_with(".parquet")) {
        let mut dirs: Vec<&str> = f.split('/').collect();
        let stem = dirs.pop().expect("non-empty").trim_end_matches(".parquet");
        let split = match stem.split_once('-') {
            _ if stem.chars().all(|c| c.is_ascii_digit()) => match dirs.pop() {
                Some(d) => d.strip_prefix("partial-").unwrap_or(d).to_string(),
                None => continue,
            },
            Some((s, _)) => s.to_string(),
            None => stem.to_string(),
        };
        if dirs.first() == Some(&"data") {
            dirs.remove(0);
        }
        let subset = dirs.last().map(|s| s.to_string());
        out.entry((subset, split)).or_default().push(f.clone());
    }
    out
}

/// Chooses the files of `subset`/`split`; without a subset, the unnamed one, `default`, or the only one.
pub fn select<'a>(
    repo: &str,
    index: &'a BTreeMap<(Option<String>, String), Vec<String>>,
    subset: Option<&str>,
    split: &str,
) -> Result<&'a Vec<String>, HubError> {
    let subsets: Vec<Option<&str>> = {
        let mut s: Vec<Option<&str>> = index.keys().map(|(s, _)| s.as_deref()).collect();
        s.dedup();
        s
    };
    let chosen: Option<&str> = match subset {
        Some(s) => {
            if !subsets.contains(&Some(s)) {
                let names: Vec<&str> = subsets.iter().map(|s| s.unwrap_or("(none)")).collect();
                return Err(HubError::NoSplit {
                    repo: repo.into(),
                    what: format!("--subset {s}"),
                    available: format!("subsets {}", names.join(", ")),
                });
            }
            Some(s)
        }
        None if subsets.contains(&None) => None,
        None if subsets.contains(&Some("default")) => Some("default"),
        None if subsets.len() == 1 => subsets[0],
        None => {
            let names: Vec<&str> = subsets.iter().flatten().copied().collect();
            return Err(HubError::NoSplit {
                repo: repo.into(),
                what: "no --subset".into(),
                available: format!("subsets {} (pass --subset)", names.join(", ")),
            });
        }
    };
    index.get(&(chosen.map(String::from), split.to_string())).ok_or_else(|| {
        let splits: Vec<&str> = index.keys().filter(|(s, _)| s.as_deref() == chosen).map(|(_, sp)| sp.as_str()).collect();
        HubError::NoSplit {
            repo: repo.into(),
            what: format!("--split {split}{}", chosen.map(|s| format!(" of subset {s}")).unwrap_or_default()),
            available: format!("splits {}", splits.join(", ")),
        }
    })
}

/// A dataset repo's Parquet files for `subset`/`split`, local (cached or downloaded). Falls back to the
/// Hub's automatic conversion (`refs/convert/parquet`) when the revision has no Parquet files.
pub fn resolve_dataset(id: &str, revision: &str, subset: Option<&str>, split: &str) -> Result<(Snapshot, Vec<PathBuf>), HubError> {
    let mut snap = listing(RepoType::Dataset, id, revision)?;
    let mut index = index_parquet(&snap.files);
    if index.is_empty() && revision == "main" {
        if let Ok(converted) = listing(RepoType::Dataset, id, "refs/convert/parquet") {
            snap = converted;
            index = index_parquet(&snap.files);
        }
    }
    let files = select(id, &index, subset, split)?.clone();
    let paths = fetch(RepoType::Dataset, &snap, &files)?;
    Ok((snap, paths))
}

/// A model repo as a local sentence-transformers folder (the snapshot directory).
pub fn resolve_model(id: &str, revision: &str) -> Result<Snapshot, HubError> {
    let snap = listing(RepoType::Model, id, revision)?;
    // Weights and files candle does not use are not downloaded.
    let skip_ext = [".bin", ".onnx", ".h5", ".msgpack", ".ot", ".pt", ".tflite", ".mlmodel", ".gguf"];
    let skip_dir = ["onnx/", "openvino/", "coreml/"];
    let wanted: Vec<String> =
        snap.files.iter().filter(|f| !skip_ext.iter().any(|e| f.ends_with(e)) && !skip_dir.iter().any(|d| f.starts_with(d))).cloned().collect();
    fetch(RepoType::Model, &snap, &wanted)?;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_local_paths_are_not_taken_for_the_hub() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("models")).unwrap();
        let abs = d.path().join("models/nope");
        assert!(looks_local(abs.to_str().unwrap()) && looks_local("./org/name") && looks_local("~/x/y"));
        assert!(!looks_local("hf://models/nope") && !looks_local("no-such-org-here/name"));
        // Relative: judged from the working folder, where `src/` exists for the tests.
        assert!(looks_local("src/nope") && !looks_local("src"));
        assert_eq!(hub_repo("src/nope", false), Err("src/nope".to_string()), "a local folder's name: the hf:// form is offered");
        assert_eq!(hub_repo("src/nope", true), Ok(None), "local by its form (a glob or file extension)");
        assert_eq!(hub_repo("hf://src/nope", false), Ok(Some(("src/nope".into(), "main".into()))));
        assert_eq!(hub_repo("no-such-org-here/name@v1", false), Ok(Some(("no-such-org-here/name".into(), "v1".into()))));
        assert_eq!(hub_repo("a/b/c", false), Ok(None), "not a repo id");
    }

    #[test]
    fn repo_ids_and_revisions() {
        assert_eq!(parse_repo_id("HuggingFaceTB/smoltalk"), Some(("HuggingFaceTB/smoltalk".into(), "main".into())));
        assert_eq!(parse_repo_id("hf://datasets/a/b@v1.0"), Some(("a/b".into(), "v1.0".into())));
        assert_eq!(parse_repo_id("hf://org/model"), Some(("org/model".into(), "main".into())));
        assert_eq!(parse_repo_id("data/sample.jsonl"), Some(("data/sample.jsonl".into(), "main".into())), "callers check the local path first");
        assert_eq!(parse_repo_id("a/b/c"), None);
        assert_eq!(parse_repo_id("./a"), None);
        assert_eq!(parse_repo_id("shards/*.parquet"), None);
        assert_eq!(parse_repo_id("a/b@"), None);
    }

    #[test]
    fn hub_layouts_are_indexed_by_subset_and_split() {
        let files: Vec<String> = [
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
            "data/all/train-00000-of-00001.parquet",
            "en/validation-00000-of-00001.parquet",
            "default/train/0000.parquet",
            "default/partial-test/0000.parquet",
            "train/0001.parquet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let idx = index_parquet(&files);
        assert_eq!(
            idx[&(None, "train".into())],
            vec!["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "train/0001.parquet"]
        );
        assert_eq!(idx[&(None, "test".into())].len(), 1);
        assert_eq!(idx[&(Some("all".into()), "train".into())].len(), 1);
        assert_eq!(idx[&(Some("en".into()), "validation".into())].len(), 1);
        assert_eq!(idx[&(Some("default".into()), "test".into())], vec!["default/partial-test/0000.parquet"]);
    }

    #[test]
    fn selection_errors_list_what_exists() {
        let files: Vec<String> = ["a/train-0.parquet", "a/test-0.parquet", "b/train-0.parquet"].iter().map(|s| s.to_string()).collect();
        let idx = index_parquet(&files);
        assert_eq!(select("r", &idx, Some("a"), "test").unwrap(), &vec!["a/test-0.parquet".to_string()]);
        let e = select("r", &idx, None, "train").unwrap_err().to_string();
        assert!(e.contains("subsets a, b (pass --subset)"), "{e}");
        let e = select("r", &idx, Some("c"), "train").unwrap_err().to_string();
        assert!(e.contains("--subset c") && e.contains("subsets a, b"), "{e}");
        let e = select("r", &idx, Some("b"), "test").unwrap_err().to_string();
        assert!(e.contains("--split test of subset b") && e.contains("splits train"), "{e}");
    }

    #[test]
    fn cached_snapshots_resolve_refs_to_shas() {
        let d = tempfile::tempdir().unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let root = d.path().join("datasets--org--name");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), sha).unwrap();
        std::fs::create_dir_all(root.join("snapshots").join(sha).join("data")).unwrap();
        std::fs::write(root.join("snapshots").join(sha).join("data/train-0.parquet"), "x").unwrap();
        let s = cached(d.path(), &Repo::dataset("org/name".into())).unwrap();
        assert_eq!((s.repo.as_str(), s.sha.as_str(), s.files.clone()), ("org/name", sha, vec!["data/train-0.parquet".to_string()]));
        let e = cached(d.path(), &Repo::dataset("org/other".into())).unwrap_err().to_string();
        assert!(e.contains("org/other: not in the HF cache"), "{e}");
    }
}
