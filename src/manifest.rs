//! The manifest: the run's checkpoint. It names every committed shard; a shard counts only once listed here.
//! Written atomically (tmp -> fsync -> rename) after each commit; versioned.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cli::EmbedArgs;
use crate::model::ModelSpec;
use crate::output::write_atomic;

pub const MANIFEST_VERSION: u32 = 1;
pub const TOOL: &str = concat!("chatspace-mpi ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Complete,
    Failed,
    Preempted,
}

/// One committed shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Relative to the manifest's folder.
    pub path: String,
    pub shard_index: u64,
    /// The chunk (`rows_per_shard` row ids) the shard belongs to; a chunk cut short by a drain is finished by
    /// later shards.
    pub chunk: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Input rows of the covered ranges that were skipped (empty text, no assistant turn).
    pub rows_skipped: u64,
    /// Row ids the shard accounts for, as sorted half-open ranges: each is in the file or was skipped.
    pub row_ranges: Vec<(u64, u64)>,
    pub bytes: u64,
    pub sha256: String,
    pub embedding_dim: usize,
    pub min_norm: Option<f32>,
    pub max_norm: Option<f32>,
    pub created_at: String,
    pub tool: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub kind: String,
    pub files: Vec<SourceFile>,
    /// Hub datasets: the repo and the commit sha its revision resolved to.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub text_field: String,
    pub extract_first_assistant: bool,
    #[serde(default)]
    pub chat_format: Option<crate::cli::ChatFormat>,
    #[serde(default)]
    pub prompt: String,
    pub max_seq_length: usize,
    pub pooling: crate::model::Pooling,
    pub normalize: bool,
    pub dtype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub world_size: usize,
    pub layout: String,
    pub exit: Option<String>,
    /// SLURM_RESTART_COUNT when the run started under Slurm.
    pub restart_count: Option<u64>,
    /// Rows this run embedded and its wall time, for throughput estimates.
    pub rows_embedded: u64,
    pub duration_seconds: f64,
    /// Seconds from the run's start to its first embedded batch (model loading, reading, tokenizing).
    #[serde(default)]
    pub first_batch_seconds: Option<f64>,
    /// The job's end time (Slurm or --end-time) and the run's last estimate of how long a drain takes.
    #[serde(default)]
    pub deadline: Option<String>,
    #[serde(default)]
    pub drain_estimate_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub status: Status,
    pub dataset: String,
    pub subset: Option<String>,
    pub split: String,
    pub model: String,
    pub model_info: ModelSpec,
    pub source: Source,
    pub rows_total: u64,
    pub rows_embedded: u64,
    pub rows_skipped: u64,
    pub embedding_dim: usize,
    pub rows_per_shard: u64,
    pub shards: Vec<ShardEntry>,
    pub created_at: String,
    pub updated_at: String,
    pub run_id: String,
    pub min_norm: Option<f32>,
    pub max_norm: Option<f32>,
    pub preprocessing: Preprocessing,
    pub run_config: EmbedArgs,
    pub runs: Vec<RunRecord>,
    pub error: Option<String>,
    pub tool: String,
    /// What must not change between a run and its resumption.
    pub fingerprint: Fingerprint,
}

/// Everything that decides which rows exist and what their embeddings are. `--resume` refuses a mismatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub dataset: String,
    pub subset: Option<String>,
    pub split: String,
    pub files: Vec<SourceFile>,
    #[serde(default)]
    pub revision: Option<String>,
    pub text_field: String,
    pub extract_first_assistant: bool,
    #[serde(default)]
    pub chat_format: Option<crate::cli::ChatFormat>,
    #[serde(default)]
    pub prompt: String,
    pub max_rows: Option<u64>,
    pub rows_per_shard: u64,
    pub model_sha256: String,
    pub architecture: crate::model::Architecture,
    pub pooling: crate::model::Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub dim: usize,
    pub dtype: String,
    #[serde(default = "default_encoder")]
    pub encoder: crate::cli::EncoderKind,
}

fn default_encoder() -> crate::cli::EncoderKind {
    crate::cli::EncoderKind::Model
}

impl Fingerprint {
    /// Names of the fields that differ, with both values.
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let a = serde_json::to_value(self).expect("serializes");
        let b = serde_json::to_value(other).expect("serializes");
        let (a, b) = (a.as_object().expect("object"), b.as_object().expect("object"));
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                let show = |v: &serde_json::Value| {
                    let s = v.to_string();
                    if s.len() > 120 { format!("{}...", &s[..117]) } else { s }
                };
                format!("{k} (manifest {}, now {})", show(v), show(b.get(k).unwrap_or(&serde_json::Value::Null)))
            })
            .collect()
    }
}

impl Manifest {
    /// Adds a committed shard and updates the totals.
    pub fn add_shard(&mut self, shard: ShardEntry) {
        self.rows_embedded += shard.rows;
        self.rows_skipped += shard.rows_skipped;
        self.min_norm = min_opt(self.min_norm, shard.min_norm);
        self.max_norm = max_opt(self.max_norm, shard.max_norm);
        let pos = self.shards.partition_point(|s| s.shard_index < shard.shard_index);
        self.shards.insert(pos, shard);
    }

    /// Input rows accounted for (embedded or skipped) by committed shards.
    pub fn rows_done(&self) -> u64 {
        self.shards.iter().map(|s| crate::ranges::total(&s.row_ranges)).sum()
    }

    /// Row ids of `chunk` already covered by committed shards.
    pub fn covered(&self, chunk: u64) -> Vec<(u64, u64)> {
        crate::ranges::normalize(self.shards.iter().filter(|s| s.chunk == chunk).flat_map(|s| s.row_ranges.iter().copied()).collect())
    }

    pub fn next_shard_index(&self) -> u64 {
        self.shards.iter().map(|s| s.shard_index + 1).max().unwrap_or(0)
    }

    pub fn write(&mut self, path: &Path) -> std::io::Result<()> {
        self.updated_at = now_rfc3339();
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes; this is a bug");
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    pub fn read(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: not a valid manifest: {e}", path.display()))?;
        if m.version != MANIFEST_VERSION {
            return Err(format!("{}: manifest version {} is not supported (expected {MANIFEST_VERSION})", path.display(), m.version));
        }
        Ok(m)
    }
}

fn min_opt(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the epoch (civil-from-days, proleptic Gregorian).
pub fn format_utc(secs: i64, millis: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_779_296, 0), "2026-11-27T11:34:56.000Z");
    }

    fn shard(i: u64, rows: u64, skipped: u64, norms: (f32, f32)) -> ShardEntry {
        ShardEntry {
            path: format!("s{i}"),
            shard_index: i,
            rows,
            chunk: i,
            rows_skipped: skipped,
            row_ranges: vec![(i * 10, i * 10 + rows + skipped)],
            bytes: 1,
            sha256: String::new(),
            embedding_dim: 4,
            min_norm: Some(norms.0),
            max_norm: Some(norms.1),
            created_at: String::new(),
            tool: TOOL.into(),
        }
    }

    #[test]
    fn fingerprint_differences_name_the_fields() {
        let a = crate::manifest::tests_support::empty_manifest().fingerprint;
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.text_field = "body".into();
        b.model_sha256 = "ff".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert!(d.iter().any(|x| x.starts_with("text_field (manifest \"text\", now \"body\")")), "{d:?}");
        assert!(d.iter().any(|x| x.starts_with("model_sha256")));
    }

    #[test]
    fn shards_stay_sorted_and_totals_add_up() {
        let mut m = crate::manifest::tests_support::empty_manifest();
        m.add_shard(shard(2, 5, 1, (0.9, 1.0)));
        m.add_shard(shard(0, 10, 0, (0.99, 1.1)));
        assert_eq!(m.shards.iter().map(|s| s.shard_index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!((m.rows_embedded, m.rows_skipped, m.rows_done()), (15, 1, 16));
        assert_eq!(m.covered(2), vec![(20, 26)]);
        assert_eq!(m.next_shard_index(), 3);
        assert_eq!((m.min_norm, m.max_norm), (Some(0.9), Some(1.1)));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("manifest.json");
        m.write(&p).unwrap();
        assert_eq!(Manifest::read(&p).unwrap().shards, m.shards);
        std::fs::write(&p, "{\"version\": 1, \"status\"").unwrap();
        assert!(Manifest::read(&p).unwrap_err().contains("not a valid manifest"));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A shard entry covering `ranges`, all embedded but `skipped` rows.
    pub fn shard(index: u64, chunk: u64, ranges: Vec<(u64, u64)>, skipped: u64) -> ShardEntry {
        let covered = crate::ranges::total(&ranges);
        ShardEntry {
            path: format!("s{index}"),
            shard_index: index,
            chunk,
            rows: covered - skipped,
            rows_skipped: skipped,
            row_ranges: ranges,
            bytes: 0,
            sha256: String::new(),
            embedding_dim: 4,
            min_norm: None,
            max_norm: None,
            created_at: String::new(),
            tool: TOOL.into(),
        }
    }

    pub fn empty_manifest() -> Manifest {
        let args = match <crate::cli::Cli as clap::Parser>::parse_from(["x", "embed", "--dataset", "d", "--model", "m"]).command {
            crate::cli::Command::Embed(a) => a,
            _ => unreachable!("embed was parsed"),
        };
        Manifest {
            version: MANIFEST_VERSION,
            status: Status::Running,
            dataset: "d".into(),
            subset: None,
            split: "train".into(),
            model: "m".into(),
            model_info: ModelSpec {
                path: "m".into(),
                name: "m".into(),
                architecture: crate::model::Architecture::Bert,
                pooling: crate::model::Pooling::Mean,
                normalize: true,
                max_seq_length: 8,
                dim: 4,
                weights_sha256: String::new(),
                prompts: Default::default(),
                default_prompt_name: None,
                source: None,
            },
            source: Source { kind: "local".into(), files: vec![], repo: None, revision: None },
            rows_total: 0,
            rows_embedded: 0,
            rows_skipped: 0,
            embedding_dim: 4,
            rows_per_shard: 10,
            shards: vec![],
            created_at: String::new(),
            updated_at: String::new(),
            run_id: "r".into(),
            min_norm: None,
            max_norm: None,
            preprocessing: Preprocessing {
                text_field: "text".into(),
                extract_first_assistant: false,
                chat_format: None,
                prompt: String::new(),
                max_seq_length: 8,
                pooling: crate::model::Pooling::Mean,
                normalize: true,
                dtype: "float32".into(),
            },
            run_config: args,
            runs: vec![],
            error: None,
            tool: TOOL.into(),
            fingerprint: Fingerprint {
                dataset: "d".into(),
                subset: None,
                split: "train".into(),
                files: vec![],
                revision: None,
                text_field: "text".into(),
                extract_first_assistant: false,
                chat_format: None,
                prompt: String::new(),
                max_rows: None,
                rows_per_shard: 10,
                model_sha256: String::new(),
                architecture: crate::model::Architecture::Bert,
                pooling: crate::model::Pooling::Mean,
                normalize: true,
                max_seq_length: 8,
                dim: 4,
                dtype: "float32".into(),
                encoder: crate::cli::EncoderKind::Model,
            },
        }
    }
}
