//! The validated run configuration: what `embed` was asked to do, checked once. It has a schema of its own,
//! separate from the command line: the plan carries it to every rank and the manifest records it, so renaming
//! a flag changes neither.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cli::{ChatFormat, EmbedArgs, EncoderKind};
use crate::encoder::{DeviceChoice, Dtype};
use crate::quantize::Precision;

/// What to do with an output that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartMode {
    /// Refuse an existing output.
    Fresh,
    /// Continue an existing manifest (refuse if there is none).
    Resume,
    /// Continue if there is a manifest, start otherwise.
    AutoResume,
    /// Delete the existing output first.
    Overwrite,
}

/// How rows are grouped into encoder batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub tokens_per_batch: Option<usize>,
    pub bucket_min_tokens: usize,
    pub bucket_max_tokens: usize,
    /// Batches a loader may have in flight per encoder at the start.
    pub prefetch_batches: usize,
}

/// The run's settings, validated (see [`RunConfig::from_args`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub dataset: String,
    pub dataset_name: Option<String>,
    pub subset: Option<String>,
    pub split: String,
    pub text_field: String,
    pub chat_format: Option<ChatFormat>,
    pub prompt: Option<String>,
    pub prompt_name: Option<String>,
    pub max_rows: Option<u64>,
    /// `--truncate-dim` (checked against the model's dim when the model is loaded).
    #[serde(default)]
    pub truncate_dim: Option<usize>,
    /// `--long-text`.
    #[serde(default)]
    pub long_text: crate::cli::LongText,
    /// `--precision` and, for int8/uint8, where the ranges come from.
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub calibration_rows: usize,
    #[serde(default)]
    pub calibration_ranges: Option<PathBuf>,
    pub model: PathBuf,
    pub model_name: Option<String>,
    pub output_root: PathBuf,
    pub rows_per_shard: u64,
    pub batching: BatchConfig,
    /// Threads per encoder (0: shared out from the node's cores).
    pub encoder_threads: usize,
    /// Threads per loader (0: the cores encoders leave, see `layout::loader_threads`).
    #[serde(default)]
    pub loader_threads: usize,
    #[serde(default)]
    pub tokenizer: crate::cli::TokenizerChoice,
    pub device: DeviceChoice,
    pub encoder: EncoderKind,
    pub dtype: Dtype,
    pub run_id: Option<String>,
    pub start: StartMode,
    pub drain_timeout_seconds: f64,
    /// `--rank-timeout` (0: off).
    #[serde(default)]
    pub rank_timeout_seconds: f64,
    pub stop_before_seconds: f64,
    /// The job's end time (Unix seconds) when given on the command line.
    pub end_time: Option<f64>,
    pub status_file: Option<PathBuf>,
    pub progress: bool,
    /// A live line even when stderr is not a terminal.
    #[serde(default)]
    pub progress_bar: bool,
    pub progress_interval_seconds: f64,
}

/// Longest duration a flag may give (a year): beyond it `Duration` arithmetic and JSON stay finite.
const MAX_SECONDS: f64 = 365.0 * 86_400.0;
/// The latest `--end-time` (the year 3000, in Unix seconds): dates stay printable and arithmetic finite.
const MAX_END_TIME: f64 = 32_503_680_000.0;

/// Upper bounds of the count flags: far above any real use, low enough that no value allocates or spawns
/// without limit. Each is `(flag, most)`.
pub const MOST_BATCH_ROWS: usize = 1 << 20;
pub const MOST_BATCH_TOKENS: usize = 1 << 28;
pub const MOST_BUCKET_TOKENS: usize = 1 << 24;
pub const MOST_PREFETCH_BATCHES: usize = 1024;
pub const MOST_THREADS: usize = 4096;

/// `v` within `[low, high]`, else a one-line error naming the flag.
pub(crate) fn within(flag: &str, v: usize, low: usize, high: usize) -> Result<(), String> {
    if (low..=high).contains(&v) {
        Ok(())
    } else {
        Err(format!("{flag} {v}: must be from {low} to {high}"))
    }
}

/// A finite number of seconds in `[min, MAX_SECONDS]` (`min` itself excluded when `open`).
fn seconds(flag: &str, v: f64, min: f64, open: bool) -> Result<f64, String> {
    let low_ok = if open { v > min } else { v >= min };
    if v.is_finite() && low_ok && v <= MAX_SECONDS {
        Ok(v)
    } else {
        let low = if open { format!("more than {min}") } else { format!("at least {min}") };
        Err(format!("{flag} {v}: must be a finite number of seconds, {low} and at most {MAX_SECONDS}"))
    }
}

impl RunConfig {
    /// Checks the flags that clap cannot; an error is one line naming the flag.
    pub fn from_args(a: &EmbedArgs) -> Result<RunConfig, String> {
        let at_least_one = |flag: &str, v: u64| if v == 0 { Err(format!("{flag} must be at least 1")) } else { Ok(()) };
        at_least_one("--rows-per-shard", a.rows_per_shard)?;
        within("--batch-size", a.batch_size, 1, MOST_BATCH_ROWS)?;
        if let Some(t) = a.tokens_per_batch {
            within("--tokens-per-batch", t, 1, MOST_BATCH_TOKENS)?;
        }
        within("--bucket-max-tokens", a.bucket_max_tokens, 1, MOST_BUCKET_TOKENS)?;
        if a.bucket_min_tokens == 0 || a.bucket_min_tokens > a.bucket_max_tokens {
            return Err("--bucket-min-tokens must be at least 1 and at most --bucket-max-tokens".into());
        }
        within("--prefetch-batches", a.prefetch_batches, 1, MOST_PREFETCH_BATCHES)?;
        within("--threads", a.threads, 0, MOST_THREADS)?;
        within("--loader-threads", a.loader_threads, 0, MOST_THREADS)?;
        // --loaders, --writers and --local-encoders are checked by `Layout::new`, which runs first.
        if a.input.max_rows == Some(0) {
            return Err("--max-rows must be at least 1".into());
        }
        if a.truncate_dim == Some(0) {
            return Err("--truncate-dim must be at least 1".into());
        }
        let precision =
            Precision::parse(&a.precision).ok_or_else(|| format!("--precision {}: one of {}", a.precision, crate::cli::PRECISIONS.join(", ")))?;
        if precision.scalar() {
            within("--calibration-rows", a.calibration_rows, 2, 1 << 24)?;
        } else if a.calibration_ranges.is_some() {
            return Err(format!("--calibration-ranges: only with --precision int8 or uint8 (not {})", precision.name()));
        }
        let device = match a.device.as_str() {
            "cpu" => DeviceChoice::Cpu,
            "auto" => DeviceChoice::Auto,
            "cuda" if crate::encoder::cuda::CUDA_BUILT => DeviceChoice::Cuda,
            "cuda" => return Err("--device cuda: this binary was built without CUDA (scripts/build-cuda.sh builds one)".into()),
            other => return Err(format!("--device {other}: cpu, cuda or auto")),
        };
        let dtype = check_dtype(&a.dtype, device, a.encoder)?;
        if a.input.text_field.is_empty() {
            return Err("--text-field must not be empty".into());
        }
        let stop_before_seconds = seconds("--stop-before", a.stop_before, 0.0, false)?;
        let drain_timeout_seconds = seconds("--drain-timeout", a.drain_timeout, 0.0, true)?;
        // 0 turns the check off; anything else must leave heartbeats (one a second) room to arrive.
        if a.rank_timeout != 0.0 {
            seconds("--rank-timeout", a.rank_timeout, 3.0, false).map_err(|e| format!("{e} (or 0: off)"))?;
        }
        let progress_interval_seconds = seconds("--progress-interval", a.progress_interval, 0.0, true)?;
        if let Some(t) = a.end_time {
            if !(t.is_finite() && (0.0..=MAX_END_TIME).contains(&t)) {
                return Err(format!("--end-time {t}: must be Unix seconds (a finite number from 0 to {MAX_END_TIME}, the year 3000)"));
            }
        }
        let start = match (a.resume, a.auto_resume, a.overwrite) {
            (true, _, _) => StartMode::Resume,
            (_, true, _) => StartMode::AutoResume,
            (_, _, true) => StartMode::Overwrite,
            _ => StartMode::Fresh,
        };
        Ok(RunConfig {
            dataset: a.input.dataset.clone(),
            dataset_name: a.dataset_name.clone(),
            subset: a.input.subset.clone(),
            split: a.input.split.clone(),
            text_field: a.input.text_field.clone(),
            chat_format: a.chat(),
            prompt: a.input.prompt.clone(),
            prompt_name: a.input.prompt_name.clone(),
            max_rows: a.input.max_rows,
            truncate_dim: a.truncate_dim,
            long_text: a.long_text,
            precision,
            calibration_rows: a.calibration_rows,
            calibration_ranges: a.calibration_ranges.clone(),
            model: a.input.model.clone(),
            model_name: a.model_name.clone(),
            output_root: a.output_root.clone(),
            rows_per_shard: a.rows_per_shard,
            batching: BatchConfig {
                batch_size: a.batch_size,
                tokens_per_batch: a.tokens_per_batch,
                bucket_min_tokens: a.bucket_min_tokens,
                bucket_max_tokens: a.bucket_max_tokens,
                prefetch_batches: a.prefetch_batches,
            },
            encoder_threads: a.threads,
            loader_threads: a.loader_threads,
            tokenizer: a.tokenizer,
            device,
            encoder: a.encoder,
            dtype,
            run_id: a.run_id.clone(),
            start,
            drain_timeout_seconds,
            rank_timeout_seconds: a.rank_timeout,
            stop_before_seconds,
            end_time: a.end_time,
            status_file: a.status_file.clone(),
            progress: !a.no_progress,
            progress_bar: a.progress_bar,
            progress_interval_seconds,
        })
    }
}

/// `--dtype`, checked against the device and encoder by the encoder's rule table (some architecture must take
/// it there; the model's own is checked when it is read). `auto` is taken as the device this process sees.
fn check_dtype(name: &str, device: DeviceChoice, encoder: EncoderKind) -> Result<Dtype, String> {
    let dtype = Dtype::parse(name).ok_or_else(|| format!("--dtype {name}: float32, float16 (cuda), bfloat16 or int8 (cpu)"))?;
    if matches!(encoder, EncoderKind::Model | EncoderKind::Candle) {
        crate::encoder::select::check(None, device, encoder == EncoderKind::Candle, dtype)?;
    }
    Ok(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_args as parse;
    use clap::Parser;

    fn error(extra: &[&str]) -> String {
        RunConfig::from_args(&parse(extra)).unwrap_err()
    }

    #[test]
    fn defaults_are_valid() {
        let c = RunConfig::from_args(&parse(&[])).unwrap();
        assert_eq!((c.text_field.as_str(), c.rows_per_shard, c.start), ("text", 8192, StartMode::Fresh));
        assert_eq!((c.device, c.dtype, c.progress), (DeviceChoice::Cpu, Dtype::F32, true));
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert!(error(&["--rows-per-shard", "0"]).contains("--rows-per-shard"));
        assert!(crate::cli::Cli::try_parse_from(["chatspace-mpi", "embed", "--dataset", "d", "--model", "m", "--device", "gpu"]).is_err());
        assert!(error(&["--bucket-min-tokens", "64", "--bucket-max-tokens", "32"]).contains("--bucket-min-tokens"));
        assert!(crate::cli::Cli::try_parse_from(["chatspace-mpi", "embed", "--dataset", "d", "--model", "m", "--dtype", "float64"]).is_err());
        // The flag's possible values are the dtypes' recorded names.
        let names: Vec<&str> = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Int8].iter().map(|d| d.name()).collect();
        assert_eq!(names, crate::cli::DTYPES);
    }

    #[test]
    fn counts_have_upper_bounds() {
        for (flag, v) in [
            ("--batch-size", "2000000"),
            ("--tokens-per-batch", "1000000000"),
            ("--bucket-max-tokens", "100000000"),
            ("--prefetch-batches", "100000"),
            ("--threads", "1000000"),
            ("--prefetch-batches", "0"),
        ] {
            let e = error(&[flag, v]);
            assert!(e.starts_with(&format!("{flag} {v}: must be from")), "{flag} {v}: {e}");
        }
        let c = RunConfig::from_args(&parse(&["--batch-size", "1048576", "--threads", "4096", "--prefetch-batches", "1024"])).unwrap();
        assert_eq!((c.batching.batch_size, c.encoder_threads, c.batching.prefetch_batches), (1 << 20, 4096, 1024));
    }

    #[test]
    fn durations_must_be_finite_and_in_range() {
        for (flag, v) in [("--progress-interval", "inf"), ("--drain-timeout", "inf"), ("--drain-timeout", "1e300"), ("--stop-before", "NaN")] {
            let e = error(&[flag, v]);
            assert!(e.starts_with(flag) && e.contains("finite"), "{flag} {v}: {e}");
        }
        assert!(error(&["--drain-timeout", "0"]).contains("more than 0"));
        assert!(error(&["--end-time", "inf"]).contains("--end-time"));
        assert!(error(&["--end-time", "1e300"]).contains("--end-time"));
        let c = RunConfig::from_args(&parse(&["--drain-timeout", "0.5", "--stop-before", "0"])).unwrap();
        assert_eq!((c.drain_timeout_seconds, c.stop_before_seconds), (0.5, 0.0));
    }

    #[test]
    fn start_modes_and_the_schema_do_not_follow_flag_names() {
        assert_eq!(RunConfig::from_args(&parse(&["--resume"])).unwrap().start, StartMode::Resume);
        assert_eq!(RunConfig::from_args(&parse(&["--auto-resume"])).unwrap().start, StartMode::AutoResume);
        assert_eq!(RunConfig::from_args(&parse(&["--overwrite"])).unwrap().start, StartMode::Overwrite);
        let json = serde_json::to_value(RunConfig::from_args(&parse(&["--no-progress", "--threads", "3"])).unwrap()).unwrap();
        assert_eq!(json["progress"], false);
        assert_eq!(json["encoder_threads"], 3);
        assert_eq!(json["dtype"], "float32");
        assert_eq!(json["start"], "fresh");
        assert!(json.get("no_progress").is_none() && json.get("threads").is_none());
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.encoder_threads, 3);
    }
}
