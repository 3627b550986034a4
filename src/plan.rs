//! The run plan: input files with their row counts, the chunks (row-id ranges) to embed, and the settings
//! every rank needs. Rank 0 builds it; everyone else receives it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::layout::Layout;
use crate::model::ModelSpec;
use crate::output::OutputPaths;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("dataset not found: {0}")]
    NotFound(String),
    #[error("no .parquet or .jsonl files found in {0}")]
    Empty(String),
    #[error("{}: unsupported dataset file (expected .parquet, .jsonl, .ndjson or .json){}", .0, compressed_hint(.0))]
    Extension(String),
    #[error("bad glob pattern in --dataset {0}: {1}")]
    Glob(String, String),
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid Parquet file: {message}")]
    Parquet { path: String, message: String },
    #[error("{path}: text field '{field}' not found (--text-field); columns: {columns}")]
    MissingField { path: String, field: String, columns: String },
    #[error("{path}:{line}: {message}")]
    Jsonl { path: String, line: u64, message: String },
    #[error("{0}: not a regular file (a FIFO, socket or device); dataset files must be regular files")]
    NotRegular(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

impl From<crate::input::InputError> for PlanError {
    fn from(e: crate::input::InputError) -> Self {
        match e {
            crate::input::InputError::Line { path, line, message } => PlanError::Jsonl { path, line, message },
            crate::input::InputError::File { path, message } => PlanError::File { path, message },
        }
    }
}

pub use crate::input::{Format, InputFile};

/// A contiguous range of row ids; one chunk becomes one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpec {
    pub index: u64,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub config: RunConfig,
    pub layout: Layout,
    pub inputs: Vec<InputFile>,
    /// Rows in scope (after --max-rows).
    pub rows_total: u64,
    pub model: ModelSpec,
    pub output: OutputPaths,
    pub run_id: String,
    pub created_at: String,
    /// Put before every text for the model (from --prompt, --prompt-name or the model's default).
    pub prompt: String,
    /// Where the dataset came from.
    pub source: DatasetSource,
    /// `--precision int8|uint8`: the per-dimension ranges every writer quantizes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_ranges: Option<crate::quantize::Ranges>,
    /// `--long-text chunk` with a model: how encoders cut long rows into windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<crate::windows::WindowSpec>,
}

impl Plan {
    /// Dimensions of the stored embeddings: the model's, or `--truncate-dim`'s.
    pub fn output_dim(&self) -> usize {
        self.config.truncate_dim.map_or(self.model.output_dim(), |n| n.min(self.model.output_dim()))
    }
}

/// A local path, or a Hub dataset repo resolved to a commit in the HF cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSource {
    /// `local` or `hf-hub`.
    pub kind: String,
    pub repo: Option<String>,
    /// The commit sha the revision resolved to.
    pub revision: Option<String>,
    /// The snapshot folder in the HF cache (files are named relative to it in the fingerprint).
    pub snapshot: Option<PathBuf>,
    /// Local datasets: the folder the files were found in (the `--dataset` folder, a file's folder, a glob's
    /// plain prefix), absolute; files are named relative to it in the fingerprint.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

impl DatasetSource {
    /// A local `--dataset` (file, folder or glob) as typed.
    pub fn local(dataset: &str) -> Self {
        let typed = Path::new(dataset);
        let root = if dataset.contains(['*', '?', '[']) {
            typed.components().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '['])).collect::<PathBuf>()
        } else if typed.is_dir() {
            typed.to_path_buf()
        } else {
            typed.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        DatasetSource { kind: "local".into(), repo: None, revision: None, snapshot: None, root: Some(absolute(&root)) }
    }

    /// How a file is named in the fingerprint, independent of where the data lives and how its path was
    /// typed: `hf://datasets/{repo}/{path}` for Hub files, the path below the dataset's root for local files.
    pub fn file_id(&self, path: &str) -> String {
        match (&self.repo, &self.snapshot, &self.root) {
            (Some(repo), Some(snap), _) => match Path::new(path).strip_prefix(snap) {
                Ok(rel) => format!("hf://datasets/{repo}/{}", rel.display()),
                Err(_) => path.to_string(),
            },
            (_, _, Some(root)) => match absolute(Path::new(path)).strip_prefix(root) {
                Ok(rel) => rel.display().to_string(),
                Err(_) => path.to_string(),
            },
            _ => path.to_string(),
        }
    }
}

/// `p` made absolute against the working folder, `.` and `..` removed, without resolving links.
pub fn absolute(p: &Path) -> PathBuf {
    crate::output::normalize_lexically(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

impl Plan {
    pub fn chunk_count(&self) -> u64 {
        self.rows_total.div_ceil(self.config.rows_per_shard)
    }

    pub fn chunk(&self, index: u64) -> ChunkSpec {
        let r = self.config.rows_per_shard;
        ChunkSpec { index, start: index * r, end: ((index + 1) * r).min(self.rows_total) }
    }
}

/// Expands `--dataset` (file, folder or glob) into a sorted list of input files. Links are followed (Hub
/// caches are made of them) but each folder and file is taken once: a link back to a folder above it does
/// not loop, and two names of one file do not embed it twice (both are warned about). A dataset file that is
/// a FIFO, socket or device is refused before anything blocks on it.
pub fn discover(dataset: &str) -> Result<Vec<(PathBuf, Format)>, PlanError> {
    let is_glob = dataset.contains(['*', '?', '[']);
    let mut files: Vec<PathBuf> = if is_glob {
        let paths = glob::glob(dataset).map_err(|e| PlanError::Glob(dataset.into(), e.to_string()))?;
        paths.filter_map(Result::ok).filter(|p| !p.is_dir()).collect()
    } else {
        let p = Path::new(dataset);
        if p.is_dir() {
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            walk(p, &mut out, &mut seen).map_err(|source| PlanError::Io { path: dataset.into(), source })?;
            out
        } else if p.exists() {
            let format = format_of(p).ok_or_else(|| PlanError::Extension(dataset.into()))?;
            if !p.is_file() {
                return Err(PlanError::NotRegular(dataset.into()));
            }
            return Ok(vec![(p.to_path_buf(), format)]);
        } else {
            return Err(PlanError::NotFound(dataset.into()));
        }
    };
    files.sort();
    let mut found = Vec::new();
    // Files by identity (device, inode: one stat each, links and hard links included) -> the first name seen.
    let mut seen_files: std::collections::HashMap<(u64, u64), PathBuf> = std::collections::HashMap::new();
    let mut compressed = 0;
    for p in files {
        let Some(format) = format_of(&p) else {
            compressed += usize::from(!compressed_hint(&p.to_string_lossy()).is_empty());
            continue;
        };
        let Some(meta) = std::fs::metadata(&p).ok().filter(|m| m.is_file()) else {
            return Err(PlanError::NotRegular(p.display().to_string()));
        };
        use std::os::unix::fs::MetadataExt;
        if let Some(first) = seen_files.get(&(meta.dev(), meta.ino())) {
            log::warn!("--dataset: {} is the same file as {}; read once", p.display(), first.display());
            continue;
        }
        seen_files.insert((meta.dev(), meta.ino()), p.clone());
        found.push((p, format));
    }
    if compressed > 0 {
        log::warn!("--dataset {dataset}: {compressed} compressed file(s) left out (compressed files are not read: decompress them first)");
    }
    if found.is_empty() {
        return Err(PlanError::Empty(dataset.into()));
    }
    Ok(found)
}

/// Files under `dir`, following links to folders once each (`seen` holds the real folders entered).
fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<PathBuf>) -> std::io::Result<()> {
    if !seen.insert(std::fs::canonicalize(dir)?) {
        log::warn!("--dataset: {} is a folder already read (a link loop or a second link to it); skipped", dir.display());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Extensions of compressed files people keep JSON Lines in.
const COMPRESSED: [&str; 5] = [".gz", ".zst", ".bz2", ".xz", ".zip"];

fn compressed_hint(name: &str) -> &'static str {
    if COMPRESSED.iter().any(|e| name.to_ascii_lowercase().ends_with(e)) {
        "; compressed files are not read: decompress it first (rows are found by byte offset)"
    } else {
        ""
    }
}

fn format_of(p: &Path) -> Option<Format> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" => Some(Format::Parquet),
        "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
        _ => None,
    }
}

/// Counts rows of every file (stopping once `max_rows` are covered) and checks the text field exists.
pub fn scan_inputs(
    files: &[(PathBuf, Format)],
    text_field: &str,
    rows_per_chunk: u64,
    max_rows: Option<u64>,
) -> Result<(Vec<InputFile>, u64), PlanError> {
    let mut inputs = Vec::new();
    let mut next = 0u64;
    for (path, format) in files {
        if max_rows.is_some_and(|m| next >= m) {
            break;
        }
        let name = path.display().to_string();
        let bytes = std::fs::metadata(path).map_err(|source| PlanError::Io { path: name.clone(), source })?.len();
        let (rows, offsets) = match format {
            Format::Parquet => (parquet_rows(path, text_field)?, Vec::new()),
            Format::Jsonl => {
                let fields = crate::input::jsonl_field_names(path)?;
                // A field that the first lines lack may come later: the rest of the file is searched for it.
                let later = || crate::input::jsonl_has_field(path, text_field);
                if !fields.is_empty() && !fields.iter().any(|f| f == text_field) && !later()? {
                    return Err(PlanError::MissingField { path: name, field: text_field.into(), columns: fields.join(", ") });
                }
                let limit = max_rows.map(|m| m - next);
                jsonl_lines(path, next, rows_per_chunk, limit)?
            }
        };
        inputs.push(InputFile { path: name, format: *format, rows, bytes, first_row: next, offsets });
        next += rows;
    }
    let total = max_rows.map_or(next, |m| next.min(m));
    Ok((inputs, total))
}

fn parquet_rows(path: &Path, text_field: &str) -> Result<u64, PlanError> {
    let name = path.display().to_string();
    let file = crate::output::open_input(path).map_err(|source| PlanError::Io { path: name.clone(), source })?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| PlanError::Parquet { path: name.clone(), message: e.to_string() })?;
    let schema = builder.schema();
    if schema.field_with_name(text_field).is_err() {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(PlanError::MissingField { path: name, field: text_field.into(), columns: columns.join(", ") });
    }
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Counts lines (a final line without '\n' counts) and records the byte offset of each line whose global
/// row id starts a chunk. Stops after `limit` lines.
fn jsonl_lines(path: &Path, first_row: u64, rows_per_chunk: u64, limit: Option<u64>) -> Result<(u64, Vec<(u64, u64)>), PlanError> {
    let name = path.display().to_string();
    let file = crate::output::open_input(path).map_err(|source| PlanError::Io { path: name.clone(), source })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offsets = Vec::new();
    let (mut lines, mut pos, mut at_line_start) = (0u64, 0u64, true);
    loop {
        if limit.is_some_and(|l| lines >= l) {
            break;
        }
        let buf = reader.fill_buf().map_err(|source| PlanError::Io { path: name.clone(), source })?;
        if buf.is_empty() {
            break;
        }
        let mut consumed = 0;
        while consumed < buf.len() {
            if at_line_start {
                if limit.is_some_and(|l| lines >= l) {
                    break;
                }
                if (first_row + lines).is_multiple_of(rows_per_chunk) {
                    offsets.push((lines, pos + consumed as u64));
                }
                at_line_start = false;
            }
            match memchr::memchr(b'\n', &buf[consumed..]) {
                Some(i) => {
                    consumed += i + 1;
                    lines += 1;
                    at_line_start = true;
                }
                None => consumed = buf.len(),
            }
        }
        pos += consumed as u64;
        reader.consume(consumed);
    }
    if !at_line_start {
        lines += 1; // last line without a trailing newline
    }
    Ok((lines, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(body.as_bytes()).unwrap();
        p
    }

    #[test]
    fn jsonl_line_counts_and_chunk_offsets() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.jsonl", "{\"text\":\"a\"}\n{\"text\":\"bb\"}\n\n{\"text\":\"c\"}");
        // Rows 0..4; chunks of 2 rows starting at global row 0 -> lines 0 and 2 start chunks.
        let (rows, offs) = jsonl_lines(&p, 0, 2, None).unwrap();
        assert_eq!(rows, 4);
        assert_eq!(offs, vec![(0, 0), (2, 27)]);
        // The same file placed at global row 1: lines 1 and 3 start chunks.
        let (_, offs) = jsonl_lines(&p, 1, 2, None).unwrap();
        assert_eq!(offs, vec![(1, 13), (3, 28)]);
        let (rows, _) = jsonl_lines(&p, 0, 2, Some(3)).unwrap();
        assert_eq!(rows, 3);
    }

    #[test]
    fn local_files_are_named_below_the_dataset_root_however_it_was_typed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data/2024")).unwrap();
        let f = write(&d.path().join("data/2024"), "a.jsonl", "{}\n");
        let abs = d.path().join("data");
        let dotted = format!("{}/./2024/../", abs.display());
        for typed in [abs.display().to_string(), dotted] {
            let src = DatasetSource::local(&typed);
            let found = discover(&typed).unwrap();
            assert_eq!(src.file_id(&found[0].0.display().to_string()), "2024/a.jsonl", "{typed}");
        }
        let src = DatasetSource::local(&format!("{}/data/*/a.jsonl", d.path().display()));
        assert_eq!(src.file_id(&f.display().to_string()), "2024/a.jsonl");
        let src = DatasetSource::local(f.to_str().unwrap());
        assert_eq!(src.file_id(f.to_str().unwrap()), "a.jsonl");
    }

    #[test]
    fn discovery_of_files_folders_and_globs() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "b.jsonl", "{}\n");
        write(d.path(), "a.jsonl", "{}\n");
        write(d.path(), "notes.txt", "x");
        let found = discover(d.path().to_str().unwrap()).unwrap();
        let names: Vec<_> = found.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(names, vec!["a.jsonl", "b.jsonl"]);
        let g = format!("{}/b*.jsonl", d.path().display());
        assert_eq!(discover(&g).unwrap().len(), 1);
        let missing = discover("/nonexistent/data.jsonl").unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/data.jsonl"), "{missing}");
        let empty = format!("{}/*.parquet", d.path().display());
        assert!(matches!(discover(&empty), Err(PlanError::Empty(_))));
    }

    #[test]
    fn scan_spans_files_and_honours_max_rows() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.jsonl", "{\"text\":\"1\"}\n{\"text\":\"2\"}\n{\"text\":\"3\"}\n");
        let b = write(d.path(), "b.jsonl", "{\"text\":\"4\"}\n{\"text\":\"5\"}\n");
        let files = vec![(a, Format::Jsonl), (b, Format::Jsonl)];
        let (inputs, total) = scan_inputs(&files, "text", 2, None).unwrap();
        assert_eq!(total, 5);
        assert_eq!(inputs[1].first_row, 3);
        assert_eq!(inputs[1].offsets, vec![(1, 13)]);
        let (inputs, total) = scan_inputs(&files, "text", 2, Some(2)).unwrap();
        assert_eq!((inputs.len(), total), (1, 2));
        let err = scan_inputs(&files, "body", 2, None).unwrap_err().to_string();
        assert!(err.contains("'body'") && err.contains("a.jsonl"), "{err}");
    }
}
