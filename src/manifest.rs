//! The checkpoint's format. The manifest (`manifest-{S}.json`) is a small header: fingerprint, runs, status,
//! totals. Committed shards are lines of an append-only log beside it (`shards-{S}.jsonl`), one JSON object
//! per shard; a shard counts only once its line is fsynced. Reads both this format (version 2) and version 1,
//! whose manifest held every shard itself (`--resume` migrates it).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RunConfig;
use crate::model::ModelSpec;

/// The format this version writes (`format_version` in the manifest).
pub const FORMAT_VERSION: u32 = 2;
pub const TOOL: &str = concat!("chatspace-mpi ", env!("CARGO_PKG_VERSION"));
/// The largest manifest header read: the header has no per-shard content (a version-1 manifest, with every
/// shard in it, is bounded by this too: about 400,000 shards).
const HEADER_MAX_BYTES: u64 = 256 << 20;
/// The longest shard log line read (an entry is a few hundred bytes; a drained shard adds a range per cut).
const LOG_LINE_MAX_BYTES: u64 = 16 << 20;

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
    /// Relative to the manifest's folder; empty for an entry without a file (see [`ShardEntry::has_file`]).
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

impl SourceFile {
    /// The same input file: same rows and bytes, and the same name. Names are paths below the dataset's root;
    /// manifests of earlier versions recorded paths as typed (`data/d.jsonl`, `/abs/data/d.jsonl`), which
    /// match a name they end with.
    pub fn same_as(&self, other: &SourceFile) -> bool {
        let (a, b) = (self.path.as_str(), other.path.as_str());
        let ends = |long: &str, short: &str| long.len() > short.len() && long.ends_with(short) && long[..long.len() - short.len()].ends_with('/');
        self.rows == other.rows && self.bytes == other.bytes && (a == b || ends(a, b) || ends(b, a))
    }
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Seconds from the controller's start to the first embedded batch: preparing (inputs, resume checks), the
    /// encoders loading the model, reading and tokenizing.
    #[serde(default)]
    pub first_batch_seconds: Option<f64>,
    /// The job's end time (Slurm or --end-time) and the run's last estimate of how long a drain takes.
    #[serde(default)]
    pub deadline: Option<String>,
    #[serde(default)]
    pub drain_estimate_seconds: Option<f64>,
    /// What this run's loaders tokenized: rows, tokens (special tokens included), rows cut at the model's
    /// length, and rows per length bin ([`crate::tokenize::length_bin`]: 0-16, 17-32, 33-64, ... tokens).
    #[serde(default)]
    pub rows_tokenized: u64,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub rows_truncated: u64,
    #[serde(default)]
    pub token_lengths: Vec<u64>,
    /// Where each rank ran and what it did.
    #[serde(default)]
    pub ranks: Vec<RankPlace>,
}

/// One rank of a run: its host (MPI_Get_processor_name) and roles ("controller", "encoder 0", ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankPlace {
    pub rank: usize,
    pub host: String,
    pub roles: Vec<String>,
}

/// The manifest header, and (when read) the shards of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub status: Status,
    pub dataset: String,
    pub subset: Option<String>,
    pub split: String,
    pub model: String,
    pub model_info: ModelSpec,
    pub source: Source,
    pub rows_total: u64,
    /// Totals over committed shards. In the file they are as of `updated_at` (the header is rewritten every
    /// few seconds during a run and at its end, the log at every commit); [`Manifest::read`] recounts them
    /// from the log.
    pub rows_embedded: u64,
    pub rows_skipped: u64,
    pub num_shards: u64,
    pub embedding_dim: usize,
    pub rows_per_shard: u64,
    /// The shard log's file name, in the manifest's folder.
    pub shard_log: String,
    pub created_at: String,
    pub updated_at: String,
    pub run_id: String,
    pub min_norm: Option<f32>,
    pub max_norm: Option<f32>,
    pub preprocessing: Preprocessing,
    /// The last run's settings (absent in manifests migrated from version 1 until a run writes them).
    #[serde(default)]
    pub run_config: Option<RunConfig>,
    pub runs: Vec<RunRecord>,
    pub error: Option<String>,
    pub tool: String,
    /// What must not change between a run and its resumption.
    pub fingerprint: Fingerprint,
    /// The log's entries, in commit order ([`Manifest::read`] fills them; never in the header file).
    #[serde(skip)]
    pub shards: Vec<ShardEntry>,
    /// How the log looked when read.
    #[serde(skip)]
    pub log: LogState,
}

/// What reading the shard log found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogState {
    /// Bytes of whole lines (where the next line goes).
    pub valid_len: u64,
    /// A last line without its newline, `(line number, bytes)`: a commit a crash interrupted. It was never
    /// committed (a commit counts once its whole line is fsynced); resuming cuts it off and redoes its rows.
    pub torn: Option<(u64, u64)>,
    /// The format the manifest was read in (1: shards were in the manifest; there was no log).
    pub read_version: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid manifest: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: manifest format {version} is not supported (this version reads 1 and {FORMAT_VERSION})")]
    Version { path: String, version: u64 },
    #[error("{path}:{line}: {message}")]
    Log { path: String, line: u64, message: String },
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
    /// The model's Dense modules (shapes, activations, weights' sha256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<crate::model::DenseSpec>,
    /// `--precision` (absent: float32) and the int8/uint8 ranges the shards were quantized with.
    #[serde(default, skip_serializing_if = "crate::quantize::Precision::is_float32")]
    pub precision: crate::quantize::Precision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_ranges: Option<crate::quantize::Ranges>,
    /// `--truncate-dim` (absent: the model's dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_dim: Option<usize>,
    /// `--long-text` (absent: truncate).
    #[serde(default, skip_serializing_if = "crate::cli::LongText::is_truncate")]
    pub long_text: crate::cli::LongText,
    pub dtype: String,
    #[serde(default = "default_encoder")]
    pub encoder: crate::cli::EncoderKind,
}

fn default_encoder() -> crate::cli::EncoderKind {
    crate::cli::EncoderKind::Model
}

impl Fingerprint {
    /// Names of the fields that differ, with both values (long values cut at a character boundary).
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut b = other.normalized();
        let same_files = self.files.len() == b.files.len() && self.files.iter().zip(&b.files).all(|(x, y)| x.same_as(y));
        if same_files {
            b.files = self.files.clone();
        }
        let a = serde_json::to_value(self.normalized()).expect("a fingerprint serializes; this is a bug");
        let b = serde_json::to_value(b).expect("a fingerprint serializes; this is a bug");
        let (a, b) = (a.as_object().expect("a struct is an object"), b.as_object().expect("a struct is an object"));
        // Both sides' keys: a field left out at its default (float32 precision, truncate mode, ...) on one side
        // and set on the other is a difference too.
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let null = serde_json::Value::Null;
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |v: &serde_json::Value| shorten(&v.to_string(), 120);
                format!("{k} (manifest {}, now {})", show(a.get(k).unwrap_or(&null)), show(b.get(k).unwrap_or(&null)))
            })
            .collect()
    }
}

impl Fingerprint {
    /// `--extract-first-assistant` and `--chat-format first-assistant` are one setting spelled two ways.
    fn normalized(&self) -> Fingerprint {
        let mut f = self.clone();
        f.extract_first_assistant = f.extract_first_assistant || f.chat_format == Some(crate::cli::ChatFormat::FirstAssistant);
        if f.extract_first_assistant {
            f.chat_format = Some(crate::cli::ChatFormat::FirstAssistant);
        }
        f
    }
}

/// `s`, or its first `max - 3` characters and "..." when it has more than `max` characters.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// The log's file name for a manifest named `manifest-{S}.json`: `shards-{S}.jsonl`.
pub fn log_name_for(manifest: &Path) -> String {
    let name = manifest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.strip_prefix("manifest-").and_then(|n| n.strip_suffix(".json")) {
        Some(split) => format!("shards-{split}.jsonl"),
        None => format!("{}.shards.jsonl", name.trim_end_matches(".json")),
    }
}

/// Member of each log line after the entry's own: `"check":"<16 hex digits>"`.
const CHECK_KEY: &[u8] = b",\"check\":\"";

/// First 8 bytes of the SHA-256 of `object`, as hex.
fn line_check(object: &[u8]) -> String {
    crate::model::hex(&Sha256::digest(object)[..8])
}

/// One log line (with its newline): the entry as a JSON object, whose last member `check` holds the first 16
/// hex digits of the SHA-256 of the line's bytes before that member, closed by `}`. Tools that read the log
/// as JSON Lines just see one more field; an edited or damaged line no longer matches its check.
pub fn encode_line(entry: &ShardEntry) -> Vec<u8> {
    let mut line = serde_json::to_vec(entry).expect("a shard entry serializes; this is a bug");
    let check = line_check(&line);
    line.pop(); // the closing brace
    line.extend_from_slice(CHECK_KEY);
    line.extend_from_slice(check.as_bytes());
    line.extend_from_slice(b"\"}\n");
    line
}

/// Parses one log line (without its newline), checking it.
pub fn decode_line(line: &[u8]) -> Result<ShardEntry, String> {
    let at = memchr::memmem::rfind(line, CHECK_KEY).ok_or("not a shard log line (no check field)")?;
    let tail = &line[at + CHECK_KEY.len()..];
    if tail.len() != 18 || &tail[16..] != b"\"}" {
        return Err("malformed check field".into());
    }
    let mut object = line[..at].to_vec();
    object.push(b'}');
    if line_check(&object).as_bytes() != &tail[..16] {
        return Err("the line does not match its check (edited or damaged); refusing to trust this log".into());
    }
    let entry: ShardEntry = serde_json::from_slice(line).map_err(|e| format!("not a shard entry: {e}"))?;
    entry.check_ranges()?;
    Ok(entry)
}

impl ShardEntry {
    /// Whether the entry has a Parquet file. An entry whose rows were all skipped has none (`path` empty,
    /// `rows`, `bytes` 0): it only records which row ids are accounted for.
    pub fn has_file(&self) -> bool {
        !self.path.is_empty()
    }

    /// How messages name the entry: its path, or its index when it has no file.
    pub fn label(&self) -> String {
        if self.has_file() {
            self.path.clone()
        } else {
            format!("shard {} (skipped rows only, no file)", self.shard_index)
        }
    }

    /// What every reader of an entry relies on: an entry without a file has no rows or bytes, each row range is
    /// non-empty (`start < end`) and the counts add up without overflow. (Order, overlap and totals are
    /// `verify`'s to report.)
    pub fn check_ranges(&self) -> Result<(), String> {
        if !self.has_file() && (self.rows != 0 || self.bytes != 0) {
            return Err(format!("shard {}: an entry without a file must have 0 rows and 0 bytes", self.shard_index));
        }
        let mut covered = 0u64;
        for &(a, b) in &self.row_ranges {
            if a >= b {
                return Err(format!("{}: row range ({a}, {b}) is empty or reversed", self.label()));
            }
            covered = covered.checked_add(b - a).ok_or_else(|| format!("{}: row ranges cover more than 2^64 rows", self.label()))?;
        }
        if self.rows.checked_add(self.rows_skipped).is_none() {
            return Err(format!("{}: rows + rows_skipped overflow", self.label()));
        }
        Ok(())
    }
}

/// Reads the shard log: every whole line checked and parsed; a last line without its newline is a torn
/// commit (see [`LogState::torn`]), any other damage an error naming the line.
pub fn read_log(path: &Path) -> Result<(Vec<ShardEntry>, LogState), ManifestError> {
    let io = |source| ManifestError::Io { path: path.display().to_string(), source };
    let file = crate::output::open_regular(path).map_err(io)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut entries, mut state) = (Vec::new(), LogState { read_version: FORMAT_VERSION, ..LogState::default() });
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let n = std::io::Read::take(&mut reader, LOG_LINE_MAX_BYTES + 1).read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        if n as u64 > LOG_LINE_MAX_BYTES {
            return Err(ManifestError::Log {
                path: path.display().to_string(),
                line: number,
                message: format!("longer than {LOG_LINE_MAX_BYTES} bytes: not a shard log line"),
            });
        }
        if line.last() != Some(&b'\n') {
            state.torn = Some((number, n as u64));
            break;
        }
        let entry = decode_line(&line[..n - 1]).map_err(|message| ManifestError::Log { path: path.display().to_string(), line: number, message })?;
        entries.push(entry);
        state.valid_len += n as u64;
    }
    Ok((entries, state))
}

impl Manifest {
    /// Reads a manifest and its shard log (or, for version 1, the shards inside it), recounting the totals
    /// from the shards.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let name = path.display().to_string();
        let invalid = |message: String| ManifestError::Invalid { path: name.clone(), message };
        let bytes = crate::output::read_regular(path, HEADER_MAX_BYTES).map_err(|source| ManifestError::Io { path: name.clone(), source })?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let obj = value.as_object_mut().ok_or_else(|| invalid("not a JSON object".into()))?;
        let version = obj.get("format_version").or_else(|| obj.get("version")).and_then(|v| v.as_u64());
        let mut legacy_shards = None;
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(1) => {
                // Version 1: `version`, the shards inline, the flags as `run_config`.
                let shards = obj.remove("shards").unwrap_or(serde_json::Value::Array(Vec::new()));
                let shards: Vec<ShardEntry> = serde_json::from_value(shards).map_err(|e| invalid(format!("shards: {e}")))?;
                if let Some(e) = shards.iter().find_map(|s| s.check_ranges().err()) {
                    return Err(invalid(e));
                }
                obj.remove("version");
                obj.remove("run_config");
                obj.insert("format_version".into(), FORMAT_VERSION.into());
                obj.insert("num_shards".into(), shards.len().into());
                obj.insert("shard_log".into(), log_name_for(path).into());
                legacy_shards = Some(shards);
            }
            Some(v) => return Err(ManifestError::Version { path: name, version: v }),
            None => return Err(invalid("no format_version".into())),
        }
        let mut m: Manifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let counted = m.num_shards;
        match legacy_shards {
            Some(shards) => {
                m.shards = shards;
                m.log = LogState { read_version: 1, ..LogState::default() };
            }
            None => {
                let log = m.log_path(path).map_err(invalid)?;
                let (shards, state) = read_log(&log)?;
                if (shards.len() as u64) < counted {
                    return Err(ManifestError::Log {
                        path: log.display().to_string(),
                        line: shards.len() as u64 + 1,
                        message: format!(
                            "the log ends after {} shards but the manifest counted {counted}: committed lines are missing",
                            shards.len()
                        ),
                    });
                }
                m.shards = shards;
                m.log = state;
            }
        }
        m.recount();
        Ok(m)
    }

    /// The shard log's path (its name must be a plain file name in the manifest's folder).
    pub fn log_path(&self, manifest: &Path) -> Result<PathBuf, String> {
        let n = &self.shard_log;
        if n.is_empty() || n.starts_with('.') || n.contains(['/', '\\']) {
            return Err(format!("shard_log {n:?} is not a file name beside the manifest"));
        }
        Ok(manifest.parent().unwrap_or(Path::new(".")).join(n))
    }

    /// Totals from `shards`.
    fn recount(&mut self) {
        let (mut embedded, mut skipped, mut lo, mut hi) = (0, 0, None, None);
        for s in &self.shards {
            embedded = u64::saturating_add(embedded, s.rows);
            skipped = u64::saturating_add(skipped, s.rows_skipped);
            lo = min_opt(lo, s.min_norm);
            hi = max_opt(hi, s.max_norm);
        }
        (self.rows_embedded, self.rows_skipped, self.num_shards, self.min_norm, self.max_norm) =
            (embedded, skipped, self.shards.len() as u64, lo, hi);
    }

    /// Counts a committed shard in the totals (the entry itself goes to the log, not here).
    pub fn count_shard(&mut self, shard: &ShardEntry) {
        self.rows_embedded = self.rows_embedded.saturating_add(shard.rows);
        self.rows_skipped = self.rows_skipped.saturating_add(shard.rows_skipped);
        self.num_shards += 1;
        self.min_norm = min_opt(self.min_norm, shard.min_norm);
        self.max_norm = max_opt(self.max_norm, shard.max_norm);
    }

    /// Input rows accounted for (embedded or skipped) by committed shards.
    pub fn rows_done(&self) -> u64 {
        self.rows_embedded.saturating_add(self.rows_skipped)
    }

    /// Every row id the shards account for, as one normalized range set (O(S log S)).
    pub fn covered(&self) -> Vec<crate::ranges::Range> {
        crate::ranges::normalize(self.shards.iter().flat_map(|s| s.row_ranges.iter().copied()).collect())
    }

    /// Pairs of shards (indexes into `shards`) that share row ids, found in one sort over all row ranges.
    pub fn overlapping_shards(&self) -> Vec<(usize, usize)> {
        crate::ranges::overlapping_pairs(self.shards.iter().enumerate().flat_map(|(i, s)| s.row_ranges.iter().map(move |&r| (r, i))).collect())
    }

    pub fn next_shard_index(&self) -> u64 {
        self.shards.iter().map(|s| s.shard_index + 1).max().unwrap_or(0)
    }

    /// The header as written: pretty JSON without the shards. Non-finite numbers (which JSON cannot hold
    /// and which would make the header unreadable) are written as absent, or 0 for a run's duration.
    pub fn header_bytes(&self) -> Vec<u8> {
        let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
        let mut header = Manifest { shards: Vec::new(), ..self.clone() };
        header.min_norm = header.min_norm.filter(|v| v.is_finite());
        header.max_norm = header.max_norm.filter(|v| v.is_finite());
        for r in &mut header.runs {
            r.duration_seconds = finite(Some(r.duration_seconds)).unwrap_or(0.0);
            r.first_batch_seconds = finite(r.first_batch_seconds);
            r.drain_estimate_seconds = finite(r.drain_estimate_seconds);
        }
        let mut bytes = serde_json::to_vec_pretty(&header).expect("a manifest serializes; this is a bug");
        bytes.push(b'\n');
        bytes
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

    #[test]
    fn fingerprint_differences_name_the_fields_and_cut_long_text_safely() {
        let a = tests_support::empty_manifest().fingerprint;
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.text_field = "body".into();
        b.model_sha256 = "ff".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert!(d.iter().any(|x| x.starts_with("text_field (manifest \"text\", now \"body\")")), "{d:?}");
        assert!(d.iter().any(|x| x.starts_with("model_sha256")));
        // A long non-ASCII value (a prompt) is cut at a character, not a byte.
        b.prompt = "é".repeat(300);
        let d = a.differences(&b);
        let p = d.iter().find(|x| x.starts_with("prompt")).unwrap();
        assert!(p.ends_with("...)") && p.contains("éé"), "{p}");
        assert_eq!(shorten("ab", 2), "ab");
        assert_eq!(shorten("日本語テキスト", 5), "日本...");
        // A setting left out of the manifest at its default and set now (or the other way) is a difference.
        for (x, y) in [
            (&a, &{
                let mut c = a.clone();
                c.long_text = crate::cli::LongText::Chunk;
                c
            }),
            (
                &{
                    let mut c = a.clone();
                    c.truncate_dim = Some(8);
                    c
                },
                &a,
            ),
        ] {
            let d = x.differences(y);
            assert_eq!(d.len(), 1, "{d:?}");
            assert!(d[0].starts_with("long_text (manifest null, now \"chunk\")") || d[0].starts_with("truncate_dim (manifest 8, now null)"), "{d:?}");
        }
    }

    #[test]
    fn log_lines_round_trip_and_catch_edits() {
        let mut e = tests_support::shard(3, 2, vec![(20, 25), (27, 30)], 1);
        e.min_norm = Some(0.99999994);
        e.path = "../../../embeddings/M/D/train/shard-00003.parquet".into();
        let line = encode_line(&e);
        assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        assert_eq!(decode_line(body).unwrap(), e);
        // Plain JSON for other tools, with one more member.
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["rows"], 7);
        assert_eq!(v["check"].as_str().unwrap().len(), 16);
        // Any edit that keeps the JSON valid is caught.
        let text = String::from_utf8(body.to_vec()).unwrap();
        for (from, to) in [("\"rows\":7", "\"rows\":8"), ("[27,30]", "[27,31]"), ("shard-00003", "shard-00004")] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text);
            assert!(decode_line(edited.as_bytes()).unwrap_err().contains("does not match its check"), "{from}");
        }
        assert!(decode_line(b"{\"rows\":1}").unwrap_err().contains("no check"));
        assert!(decode_line(&body[..body.len() - 3]).is_err());
        assert!(decode_line(b"").is_err());
    }

    fn write_v2(dir: &Path, m: &Manifest, lines: &[Vec<u8>]) -> PathBuf {
        let p = dir.join("manifest-train.json");
        std::fs::write(&p, m.header_bytes()).unwrap();
        std::fs::write(dir.join(&m.shard_log), lines.concat()).unwrap();
        p
    }

    #[test]
    fn reading_recounts_from_the_log_and_reports_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let mut m = tests_support::empty_manifest();
        let shards = [tests_support::shard(0, 0, vec![(0, 10)], 1), tests_support::shard(2, 1, vec![(10, 15)], 0)];
        m.count_shard(&shards[0]); // the header lags the log by one commit
        let lines: Vec<Vec<u8>> = shards.iter().map(encode_line).collect();
        let p = write_v2(d.path(), &m, &lines);
        let r = Manifest::read(&p).unwrap();
        assert_eq!(r.shards, shards);
        assert_eq!((r.num_shards, r.rows_embedded, r.rows_skipped, r.rows_done(), r.next_shard_index()), (2, 14, 1, 15, 3));
        assert_eq!(r.log, LogState { valid_len: (lines[0].len() + lines[1].len()) as u64, torn: None, read_version: 2 });
        // A torn last line (a crash mid-append): not an error, not a shard.
        let third = encode_line(&tests_support::shard(3, 2, vec![(20, 30)], 0));
        let mut torn = lines.clone();
        torn.push(third[..40].to_vec());
        write_v2(d.path(), &m, &torn);
        let r = Manifest::read(&p).unwrap();
        assert_eq!(r.shards.len(), 2);
        assert_eq!(r.log.torn, Some((3, 40)));
        // A damaged line that is not the last, or a complete last line that is bad: errors naming the line.
        let mut bad = lines.clone();
        bad[0] = String::from_utf8(bad[0].clone()).unwrap().replace("\"rows\":9", "\"rows\":19").into_bytes();
        write_v2(d.path(), &m, &bad);
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("shards-train.jsonl:1:") && e.contains("does not match"), "{e}");
        // Lines missing that the header counted.
        m.count_shard(&shards[1]);
        m.count_shard(&shards[1]);
        write_v2(d.path(), &m, &lines);
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("committed lines are missing"), "{e}");
        std::fs::write(&p, b"{\"format_version\": 2, \"status\"").unwrap();
        assert!(Manifest::read(&p).unwrap_err().to_string().contains("not a valid manifest"));
        std::fs::write(&p, b"{\"format_version\": 9}").unwrap();
        assert!(Manifest::read(&p).unwrap_err().to_string().contains("format 9 is not supported"));
    }

    #[test]
    fn files_match_by_name_below_the_root_and_old_typed_paths_still_match() {
        let f = |path: &str, rows| SourceFile { path: path.into(), rows, bytes: 10 };
        assert!(f("sub/a.jsonl", 3).same_as(&f("sub/a.jsonl", 3)));
        assert!(f("data/sub/a.jsonl", 3).same_as(&f("sub/a.jsonl", 3)), "a version-2 manifest's typed path");
        assert!(f("/abs/data/a.jsonl", 3).same_as(&f("a.jsonl", 3)));
        assert!(!f("data/xa.jsonl", 3).same_as(&f("a.jsonl", 3)), "a name, not a suffix of one");
        assert!(!f("a.jsonl", 3).same_as(&f("a.jsonl", 4)), "other rows");
        let a = tests_support::empty_manifest().fingerprint;
        let (mut old, mut new) = (a.clone(), a);
        old.files = vec![f("data/a.jsonl", 3), f("data/b.jsonl", 2)];
        new.files = vec![f("a.jsonl", 3), f("b.jsonl", 2)];
        assert!(old.differences(&new).is_empty());
        new.files[1].rows = 1;
        assert_eq!(old.differences(&new).len(), 1);
    }

    #[test]
    fn covered_rows_and_overlapping_shards() {
        let mut m = tests_support::empty_manifest();
        m.shards = vec![
            tests_support::shard(0, 0, vec![(0, 10)], 0),
            tests_support::shard(1, 1, vec![(10, 15), (17, 20)], 0),
            tests_support::shard(2, 1, vec![(15, 17)], 0),
        ];
        assert_eq!((m.covered(), m.overlapping_shards()), (vec![(0, 20)], vec![]));
        m.shards.push(tests_support::shard(3, 0, vec![(8, 9)], 0));
        assert_eq!(m.overlapping_shards(), vec![(0, 3)]);
    }

    #[test]
    fn version_one_manifests_are_read_with_their_shards() {
        let d = tempfile::tempdir().unwrap();
        let m = tests_support::empty_manifest();
        let mut v = serde_json::to_value(&m).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["format_version", "num_shards", "shard_log"] {
            o.remove(k);
        }
        o.insert("version".into(), 1.into());
        o.insert("run_config".into(), serde_json::json!({"dataset": "d", "no_progress": true}));
        let shards = vec![tests_support::shard(0, 0, vec![(0, 10)], 0), tests_support::shard(1, 1, vec![(10, 12)], 2)];
        o.insert("shards".into(), serde_json::to_value(&shards).unwrap());
        let p = d.path().join("manifest-train.json");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let r = Manifest::read(&p).unwrap();
        assert_eq!(r.shards, shards);
        assert_eq!((r.log.read_version, r.format_version, r.shard_log.as_str()), (1, 2, "shards-train.jsonl"));
        assert_eq!((r.rows_done(), r.run_config.is_none()), (12, true));
    }

    #[test]
    fn log_names_are_plain_files_beside_the_manifest() {
        assert_eq!(log_name_for(Path::new("/o/indexes/M/D/manifest-train.json")), "shards-train.jsonl");
        assert_eq!(log_name_for(Path::new("x.json")), "x.shards.jsonl");
        let mut m = tests_support::empty_manifest();
        let p = Path::new("/o/i/manifest-train.json");
        assert_eq!(m.log_path(p).unwrap(), Path::new("/o/i/shards-train.jsonl"));
        for bad in ["../../etc/passwd", "", ".hidden", "a/b"] {
            m.shard_log = bad.into();
            assert!(m.log_path(p).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod robustness {
    //! The manifest reader against extreme and hostile input: what the program writes always reads back, and
    //! no header or log, however damaged, makes a reader (or what `status`, `verify` and `--resume` do with
    //! what it read) panic.
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::fuzz::{config, json_value, replace_somewhere};
    use proptest::prelude::*;

    fn extreme_manifest() -> Manifest {
        let mut m = tests_support::empty_manifest();
        m.rows_total = u64::MAX;
        m.rows_per_shard = u64::MAX;
        m.dataset = "d\u{0}\u{1b}[31m \u{202e}\u{1F469}\u{200D}\u{1F52C} \"quoted\" \\ back".into();
        m.error = Some("x".repeat(100_000));
        m.min_norm = Some(f32::NAN);
        m.max_norm = Some(f32::INFINITY);
        m.runs.push(RunRecord {
            run_id: "r".into(),
            started_at: String::new(),
            ended_at: None,
            world_size: usize::MAX,
            layout: String::new(),
            exit: None,
            restart_count: Some(u64::MAX),
            rows_embedded: u64::MAX,
            duration_seconds: f64::NAN,
            first_batch_seconds: Some(f64::INFINITY),
            deadline: None,
            drain_estimate_seconds: Some(f64::MAX),
            ..Default::default()
        });
        m
    }

    #[test]
    fn a_manifest_with_extreme_values_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("manifest-train.json");
        let m = extreme_manifest();
        let mut c = Checkpoint::create(&path, m.clone()).unwrap();
        let mut big = tests_support::shard(u64::MAX - 1, u64::MAX, vec![(0, 1), (u64::MAX - 2, u64::MAX)], 0);
        big.min_norm = Some(f32::MIN_POSITIVE);
        big.max_norm = Some(f32::MAX);
        c.commit(&big).unwrap();
        c.write_header().unwrap();
        let back = Manifest::read(&path).unwrap();
        assert_eq!((back.rows_total, back.dataset.as_str(), back.error.as_deref()), (u64::MAX, m.dataset.as_str(), m.error.as_deref()));
        assert_eq!(back.runs[0].duration_seconds, 0.0, "NaN is written as 0");
        assert_eq!((back.runs[0].first_batch_seconds, back.runs[0].drain_estimate_seconds), (None, Some(f64::MAX)));
        assert_eq!((back.runs[0].rows_embedded, back.runs[0].world_size), (u64::MAX, usize::MAX));
        assert_eq!(back.shards, vec![big]);
        assert_eq!((back.min_norm, back.max_norm), (Some(f32::MIN_POSITIVE), Some(f32::MAX)));
        // What readers do with it stays finite.
        let _ = (back.covered(), back.overlapping_shards(), back.rows_done(), crate::inspect::status_text(&back));
    }

    /// A valid header and log for the fuzz targets to damage.
    fn valid_files(d: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
        let path = d.join("manifest-train.json");
        let mut m = tests_support::empty_manifest();
        m.rows_total = 30;
        let mut c = Checkpoint::create(&path, m).unwrap();
        for (i, r) in [(0u64, 10u64), (10, 20)].iter().enumerate() {
            c.commit(&tests_support::shard(i as u64, i as u64, vec![*r], 1)).unwrap();
        }
        c.write_header().unwrap();
        let header = std::fs::read(&path).unwrap();
        let log = std::fs::read(d.join("shards-train.jsonl")).unwrap();
        (path, header, log)
    }

    /// Everything a reader does with a manifest it could read.
    fn use_it(path: &Path) {
        if let Ok(m) = Manifest::read(path) {
            let _ = (m.covered(), m.overlapping_shards(), m.rows_done(), m.next_shard_index(), crate::inspect::status_text(&m));
            let _ = crate::scheduler::WorkList::new(m.rows_total, m.rows_per_shard.max(1), m.covered());
            let _ = crate::inspect::verify(path, 1, false);
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<usize>()) {
            let d = tempfile::tempdir().unwrap();
            let (path, header, _) = valid_files(d.path());
            std::fs::write(&path, &bytes).unwrap();
            use_it(&path);
            // A valid header cut anywhere.
            std::fs::write(&path, &header[..cut % (header.len() + 1)]).unwrap();
            use_it(&path);
        }

        #[test]
        fn damaged_headers_never_panic(pick in any::<usize>(), with in json_value()) {
            let d = tempfile::tempdir().unwrap();
            let (path, header, _) = valid_files(d.path());
            let mut v: serde_json::Value = serde_json::from_slice(&header).unwrap();
            replace_somewhere(&mut v, pick, with);
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            use_it(&path);
        }

        #[test]
        fn damaged_logs_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let d = tempfile::tempdir().unwrap();
            let (path, _, mut log) = valid_files(d.path());
            for (at, b) in edits {
                let i = at % log.len();
                log[i] = b;
            }
            let log_path = d.path().join("shards-train.jsonl");
            std::fs::write(&log_path, &log[..cut % (log.len() + 1)]).unwrap();
            use_it(&path);
        }

        #[test]
        fn validly_checked_hostile_entries_never_panic(pick in any::<usize>(), with in json_value(),
            ranges in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            rows in prop_oneof![Just(u64::MAX), any::<u64>()], skipped in prop_oneof![Just(u64::MAX), Just(1u64), any::<u64>()]) {
            // Lines whose check matches (anyone can compute it) but whose values are hostile.
            let d = tempfile::tempdir().unwrap();
            let (path, _, _) = valid_files(d.path());
            let mut e = tests_support::shard(2, 2, vec![(20, 30)], 0);
            (e.row_ranges, e.rows, e.rows_skipped) = (ranges, rows, skipped);
            let mut v = serde_json::to_value(&e).unwrap();
            replace_somewhere(&mut v, pick, with);
            let line = match serde_json::from_value::<ShardEntry>(v.clone()) {
                Ok(entry) => encode_line(&entry),
                Err(_) => {
                    // Not an entry: written with a matching check all the same.
                    let mut object = serde_json::to_vec(&v).unwrap();
                    if object.last() != Some(&b'}') { object = b"{}".to_vec(); }
                    let check = line_check(&object);
                    object.pop();
                    let mut l = object;
                    l.extend_from_slice(CHECK_KEY);
                    l.extend_from_slice(check.as_bytes());
                    l.extend_from_slice(b"\"}\n");
                    l
                }
            };
            let log_path = d.path().join("shards-train.jsonl");
            let mut log = std::fs::read(&log_path).unwrap();
            log.extend_from_slice(&line);
            std::fs::write(&log_path, &log).unwrap();
            use_it(&path);
        }
    }

    #[test]
    fn an_endless_log_line_is_refused_not_read_into_memory() {
        let d = tempfile::tempdir().unwrap();
        let (path, _, mut log) = valid_files(d.path());
        log.extend(std::iter::repeat_n(b'x', (LOG_LINE_MAX_BYTES + 10) as usize));
        log.push(b'\n');
        std::fs::write(d.path().join("shards-train.jsonl"), &log).unwrap();
        let e = Manifest::read(&path).unwrap_err().to_string();
        assert!(e.contains("shards-train.jsonl:3:") && e.contains("longer than"), "{e}");
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
        Manifest {
            format_version: FORMAT_VERSION,
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
                include_prompt: true,
                dense: Vec::new(),
            },
            source: Source { kind: "local".into(), files: vec![], repo: None, revision: None },
            rows_total: 0,
            rows_embedded: 0,
            rows_skipped: 0,
            num_shards: 0,
            embedding_dim: 4,
            rows_per_shard: 10,
            shard_log: "shards-train.jsonl".into(),
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
            run_config: None,
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
                dense: Vec::new(),
                precision: Default::default(),
                quantization_ranges: None,
                truncate_dim: None,
                long_text: Default::default(),
                dtype: "float32".into(),
                encoder: crate::cli::EncoderKind::Model,
            },
            shards: Vec::new(),
            log: LogState::default(),
        }
    }
}
