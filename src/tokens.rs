//! `chatspace-mpi tokens`: tokenizes a dataset exactly as `embed` would (same rows, extraction, prompt,
//! truncation and skipped rows) and reports rows, tokens, truncation, the length distribution and speed;
//! optionally writes every row's ids to Parquet for comparison with other tokenizers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow_array::{ArrayRef, Int32Array, ListArray, RecordBatch, UInt64Array};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema};
use serde::Serialize;

use crate::cli::TokensArgs;
use crate::tokenize::TextTokenizer;

/// Rows read and tokenized at a time.
const ROWS_PER_READ: u64 = 8192;

/// What `tokens` prints.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub dataset: String,
    pub model: String,
    pub tokenizer: &'static str,
    pub threads: usize,
    pub max_seq_length: usize,
    /// Rows that would be embedded.
    pub rows: u64,
    /// Rows `embed` would skip (no text).
    pub rows_skipped: u64,
    pub rows_truncated: u64,
    /// Tokens of the embedded rows, special tokens included (what encoders compute on).
    pub tokens: u64,
    pub length_mean: f64,
    pub length_p50: usize,
    pub length_p90: usize,
    pub length_p99: usize,
    pub length_max: usize,
    /// Rows per length range (tokens, both ends included).
    pub histogram: Vec<Bin>,
    /// Wall seconds in the tokenizer, and the process CPU seconds then (all tokenizer threads).
    pub tokenize_seconds: f64,
    pub tokenize_cpu_seconds: f64,
    pub tokens_per_second: f64,
    pub tokens_per_cpu_second: f64,
    /// Wall seconds in all, reading included.
    pub seconds: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Bin {
    pub from: usize,
    pub to: usize,
    pub rows: u64,
}

pub fn command(args: &TokensArgs) -> i32 {
    match run(args) {
        Ok(s) => {
            if args.json {
                println!("{}", serde_json::to_string(&s).expect("a summary serializes"));
            } else {
                print!("{}", render(&s));
            }
            crate::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::EXIT_FAILED
        }
    }
}

/// The `embed` flags these mean, with `embed`'s defaults for the rest: both commands then resolve the
/// dataset, model and prompt by the same code.
fn embed_args(a: &TokensArgs) -> anyhow::Result<crate::cli::EmbedArgs> {
    let argv: Vec<std::ffi::OsString> = vec![
        "chatspace-mpi".into(),
        "embed".into(),
        "--dataset".into(),
        a.input.dataset.clone().into(),
        "--model".into(),
        a.input.model.clone().into(),
    ];
    let crate::cli::Command::Embed(mut e) = <crate::cli::Cli as clap::Parser>::try_parse_from(argv)?.command else {
        unreachable!("embed was parsed (this is a bug)")
    };
    e.input = a.input.clone();
    e.tokenizer = a.tokenizer;
    Ok(e)
}

pub fn run(args: &TokensArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    crate::config::within("--threads", args.threads, 0, crate::config::MOST_THREADS).map_err(anyhow::Error::msg)?;
    let config = crate::config::RunConfig::from_args(&embed_args(args)?).map_err(anyhow::Error::msg)?;
    let model = crate::controller::prepare::load_model(&config)?;
    let tokenizer = TextTokenizer::load(&model, config.tokenizer)?;
    let prompt = model.resolve_prompt(config.prompt.as_deref(), config.prompt_name.as_deref()).map_err(anyhow::Error::msg)?;
    let (files, _) = crate::controller::prepare::find_dataset(&config)?;
    if files.iter().any(|(_, f)| *f != files[0].1) {
        anyhow::bail!("--dataset {}: mixes Parquet and JSONL files; use one format", config.dataset);
    }
    let (inputs, rows_total) = crate::plan::scan_inputs(&files, &config.text_field, ROWS_PER_READ, config.max_rows)?;
    let reader = crate::input::ChunkReader::new(inputs, crate::input::TextRule { field: config.text_field.clone(), chat: config.chat_format })?;
    let threads = if args.threads > 0 { args.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let mut ids_out = match &args.ids_output {
        Some(p) => Some(IdsWriter::create(p)?),
        None => None,
    };
    let mut lengths = vec![0u64; model.max_seq_length + 1];
    let (mut rows, mut skipped, mut truncated, mut tokens) = (0u64, 0u64, 0u64, 0u64);
    let (mut wall, mut cpu) = (0.0f64, 0.0f64);
    let mut start = 0;
    while start < rows_total {
        let end = (start + ROWS_PER_READ).min(rows_total);
        let chunk = reader.read(&[(start, end)])?;
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let enc = tokenizer.encode_batch(&chunk.texts, &prompt, threads).map_err(|e| anyhow::anyhow!("tokenizing rows {start}..{end}: {e}"))?;
        wall += t0.elapsed().as_secs_f64();
        cpu += cpu_seconds() - c0;
        for i in 0..enc.rows() {
            let n = enc.len_of(i);
            // The tokenizer never returns more than max_seq_length ids; a longer row would be a bug, counted
            // in the last bin rather than lost.
            lengths[n.min(model.max_seq_length)] += 1;
            tokens += n as u64;
        }
        rows += enc.rows() as u64;
        skipped += chunk.skipped;
        truncated += enc.truncated;
        if let Some(w) = ids_out.as_mut() {
            w.write(&chunk.row_ids, &enc).with_context(|| format!("--ids-output {}", w.path.display()))?;
        }
        start = end;
    }
    if let Some(w) = ids_out {
        w.finish()?;
    }
    let (p50, p90, p99) = (percentile(&lengths, 0.5), percentile(&lengths, 0.9), percentile(&lengths, 0.99));
    Ok(Summary {
        dataset: config.dataset.clone(),
        model: model.name.clone(),
        tokenizer: tokenizer.engine_name(),
        threads,
        max_seq_length: model.max_seq_length,
        rows,
        rows_skipped: skipped,
        rows_truncated: truncated,
        tokens,
        length_mean: if rows > 0 { tokens as f64 / rows as f64 } else { 0.0 },
        length_p50: p50,
        length_p90: p90,
        length_p99: p99,
        length_max: lengths.iter().rposition(|&c| c > 0).unwrap_or(0),
        histogram: histogram(&lengths),
        tokenize_seconds: wall,
        tokenize_cpu_seconds: cpu,
        tokens_per_second: tokens as f64 / wall.max(1e-9),
        tokens_per_cpu_second: tokens as f64 / cpu.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// CPU seconds of this process so far, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The smallest length at or below which a share `q` of the rows lie (`counts[len]` rows of length `len`).
fn percentile(counts: &[u64], q: f64) -> usize {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (len, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return len;
        }
    }
    counts.len() - 1
}

/// Rows per length bin ([`crate::tokenize::length_bin`]: 0-16, 17-32, 33-64, ...) up to the longest length.
fn histogram(counts: &[u64]) -> Vec<Bin> {
    let max = counts.len().saturating_sub(1);
    (0..=crate::tokenize::length_bin(max))
        .map(|i| {
            let (from, to) = crate::tokenize::bin_range(i);
            let to = to.min(max);
            Bin { from, to, rows: counts.get(from..=to).map_or(0, |c| c.iter().sum()) }
        })
        .collect()
}

/// The summary as people read it.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let skipped = if s.rows_skipped > 0 { format!(" ({} rows without text skipped)", s.rows_skipped) } else { String::new() };
    let _ = writeln!(o, "{} rows{skipped}, {} tokens, {} rows cut at max_seq_length {}", s.rows, s.tokens, s.rows_truncated, s.max_seq_length);
    let _ = writeln!(
        o,
        "tokens per row (special tokens included): mean {:.1}, p50 {}, p90 {}, p99 {}, max {}",
        s.length_mean, s.length_p50, s.length_p90, s.length_p99, s.length_max
    );
    let most = s.histogram.iter().map(|b| b.rows).max().unwrap_or(0).max(1);
    for b in &s.histogram {
        let bar = "#".repeat(((b.rows as f64 / most as f64) * 40.0).ceil() as usize);
        let _ = writeln!(o, "  {:>6}-{:<6} {:>10}  {bar}", b.from, b.to, b.rows);
    }
    let _ = writeln!(
        o,
        "tokenizer {} on {} threads: {:.0} tokens/s ({:.0} per CPU second); {:.2} s tokenizing, {:.2} s in all",
        s.tokenizer, s.threads, s.tokens_per_second, s.tokens_per_cpu_second, s.tokenize_seconds, s.seconds
    );
    o
}

/// Streams `row_id` and `ids` to a temporary Parquet file, renamed into place once complete.
struct IdsWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: parquet::arrow::ArrowWriter<std::fs::File>,
    schema: Arc<Schema>,
}

impl IdsWriter {
    fn create(path: &Path) -> anyhow::Result<IdsWriter> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().with_context(|| format!("--ids-output {}: not a file name", path.display()))?;
        let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("--ids-output {}: cannot create {}", path.display(), tmp.display()))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::UInt64, false),
            Field::new("ids", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, false))), false),
        ]));
        let props =
            parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::ZSTD(Default::default())).build();
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        Ok(IdsWriter { path: path.to_path_buf(), tmp, writer, schema })
    }

    fn write(&mut self, row_ids: &[u64], enc: &crate::tokenize::Encoded) -> anyhow::Result<()> {
        let values = Int32Array::from_iter_values(enc.ids.iter().map(|&i| i as i32));
        let offsets = OffsetBuffer::new(enc.starts.iter().map(|&s| s as i32).collect::<Vec<i32>>().into());
        let list = ListArray::try_new(Arc::new(Field::new_list_field(DataType::Int32, false)), offsets, Arc::new(values), None)?;
        let cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(row_ids.to_vec())), Arc::new(list)];
        self.writer.write(&RecordBatch::try_new(self.schema.clone(), cols)?)?;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        let ctx = || format!("--ids-output {}", self.path.display());
        let result = (|| -> anyhow::Result<()> {
            let file = self.writer.into_inner()?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result.with_context(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histogram_of_length_counts() {
        let mut c = vec![0u64; 257];
        c[10] = 50;
        c[100] = 40;
        c[256] = 10;
        assert_eq!((percentile(&c, 0.5), percentile(&c, 0.9), percentile(&c, 0.91), percentile(&c, 0.99)), (10, 100, 256, 256));
        assert_eq!(percentile(&[0, 0], 0.5), 0, "no rows");
        let h = histogram(&c);
        let ranges: Vec<(usize, usize)> = h.iter().map(|b| (b.from, b.to)).collect();
        assert_eq!(ranges, vec![(0, 16), (17, 32), (33, 64), (65, 128), (129, 256)]);
        assert_eq!(h.iter().map(|b| b.rows).collect::<Vec<_>>(), vec![50, 0, 0, 40, 10]);
        assert_eq!(histogram(&c[..11]).len(), 1, "lengths up to 10: one bin");
    }
}
