//! Command-line interface: the subcommands and the `embed` flags (checked into a `config::RunConfig`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "chatspace-mpi", version = env!("CHATSPACE_VERSION"), about = "Embed large text datasets with MPI ranks (controller, loaders, encoders, writers)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `embed` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed a dataset into Parquet shards plus a JSON manifest.
    Embed(EmbedArgs),
    /// Check a manifest and its shards (existence, size, sha256, schema, row ids); non-zero exit on problems.
    Verify {
        /// A manifest-{split}.json, or a folder holding manifests (an output root, or its indexes/M/D):
        /// every manifest in it is checked.
        manifest: PathBuf,
        /// Shards hashed at once (0: one per core).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
    },
    /// Show a run's progress from its manifest: status, rows done/remaining, runs, throughput, time left.
    Status {
        /// A manifest-{split}.json, or a folder holding manifests (an output root, or its indexes/M/D).
        manifest: PathBuf,
        /// One JSON object per manifest, a line each (for scripts and monitoring).
        #[arg(long)]
        json: bool,
    },
    /// Run the encoder alone on a JSONL of texts: tokens/s per batch size (after a warm-up pass), and
    /// optionally the embeddings as JSONL (parity checks on a GPU machine without cargo).
    Encode(EncodeArgs),
    /// Tokenize a dataset as `embed` would, without embedding: rows, tokens, rows cut, the length
    /// distribution and tokens/s (to size and cost a job before submitting it); `--ids-output` writes the ids.
    Tokens(TokensArgs),
    /// Write one self-contained HTML page (inline SVG, no network) about the outputs of a manifest or folder:
    /// rows committed over time per run with preemptions and resumes marked, rows and bytes per shard, the
    /// token-length histogram and truncations.
    Report {
        /// A manifest-{split}.json, or a folder holding manifests (an output root, or its indexes/M/D).
        path: PathBuf,
        /// The page to write.
        #[arg(short, long, default_value = "report.html")]
        output: PathBuf,
    },
    /// Print a shell completion script (e.g. `source <(chatspace-mpi completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The values of `--device`.
pub const DEVICES: [&str; 3] = ["cpu", "cuda", "auto"];
/// The values of `--dtype` (the names `encoder::Dtype` records).
pub const DTYPES: [&str; 4] = ["float32", "float16", "bfloat16", "int8"];
/// The values of `--precision` (the names `quantize::Precision` records).
pub const PRECISIONS: [&str; 6] = ["float32", "float16", "int8", "uint8", "binary", "ubinary"];

/// How a text field holding a conversation (a list of {role, content}) becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChatFormat {
    FirstAssistant,
    Turns,
}

/// What encoder ranks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderKind {
    /// The model: BERT on this crate's CPU forward pass (src/encoder/bert.rs), Qwen3 on candle.
    Model,
    /// BERT on candle-transformers' `BertModel`: the reference the fast path is tested against (slower).
    Candle,
    /// No model: placeholder vectors, for plumbing benchmarks (loaders give one id per byte).
    Noop,
    /// No model, but loaders tokenize for the real model: "can this node's loaders feed N GPUs".
    NoopTokenized,
}

/// What happens to a row longer than the model's max length (`--long-text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LongText {
    /// Cut at the max length, as sentence-transformers does.
    #[default]
    Truncate,
    /// Embedded in windows of the max length (the special tokens, and the prompt's tokens, in each); stored as
    /// their token-weighted mean, normalized when the model normalizes.
    Chunk,
}

impl LongText {
    pub fn is_truncate(&self) -> bool {
        *self == LongText::Truncate
    }
}

/// What to read and with which model: the flags `embed` and `tokens` share (both resolve them by the same
/// code, so `tokens` sees exactly the rows and text `embed` embeds).
#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq)]
pub struct InputArgs {
    /// Input: a Parquet or JSONL file, a folder of them, a glob (quote it), or a Hugging Face dataset
    /// `org/name[@revision]` (also `hf://datasets/org/name`; read offline from the HF cache when present).
    #[arg(long, env = "CHATSPACE_DATASET")]
    pub dataset: String,
    /// Subset (configuration) name, recorded in the layout and manifest.
    #[arg(long)]
    pub subset: Option<String>,
    /// Split name, recorded in the layout and manifest.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Column / JSON field holding the text.
    #[arg(long, env = "CHATSPACE_TEXT_FIELD", default_value = "text")]
    pub text_field: String,
    /// The text field holds a list of {role, content}: embed the first assistant/model turn
    /// (same as --chat-format first-assistant).
    #[arg(long, conflicts_with = "chat_format")]
    pub extract_first_assistant: bool,
    /// The text field holds a list of {role, content}: `first-assistant` embeds the first assistant/model
    /// turn; `turns` embeds the whole conversation as "role: content" lines.
    #[arg(long, value_enum)]
    pub chat_format: Option<ChatFormat>,
    /// Text put before every input (e.g. an instruction); recorded in the manifest.
    #[arg(long, conflicts_with = "prompt_name")]
    pub prompt: Option<String>,
    /// A prompt of the model's config_sentence_transformers.json, e.g. `query`.
    #[arg(long)]
    pub prompt_name: Option<String>,
    /// Only the first N input rows.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// A sentence-transformers model folder, or a Hugging Face model `org/name[@revision]`.
    #[arg(long, env = "CHATSPACE_MODEL")]
    pub model: PathBuf,
}

/// Flags of `chatspace-mpi embed`. Serialized into the plan every rank receives. The flags a site or a batch
/// script sets once can also come from `CHATSPACE_*` environment variables (a flag on the command line wins).
#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq)]
pub struct EmbedArgs {
    /// The input and the model.
    #[command(flatten)]
    #[serde(flatten)]
    pub input: InputArgs,
    /// Name used for the dataset in the output layout (default: derived from --dataset).
    #[arg(long)]
    pub dataset_name: Option<String>,
    /// Name used for the model in the output layout (default: the model folder's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Output root folder.
    #[arg(long, env = "CHATSPACE_OUTPUT_ROOT", default_value = "out")]
    pub output_root: PathBuf,
    /// Rows per shard; each shard covers one contiguous range of row ids.
    #[arg(long, env = "CHATSPACE_ROWS_PER_SHARD", default_value_t = 8192)]
    pub rows_per_shard: u64,
    /// Most rows in one encoder batch.
    #[arg(long, env = "CHATSPACE_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,
    /// Token budget per batch (rows x padded length); overrides --batch-size when set.
    #[arg(long)]
    pub tokens_per_batch: Option<usize>,
    /// Smallest bucket length in tokens.
    #[arg(long, default_value_t = 16)]
    pub bucket_min_tokens: usize,
    /// Largest bucket length in tokens.
    #[arg(long, default_value_t = 32768)]
    pub bucket_max_tokens: usize,
    /// Loader ranks (default: from the world size, see README).
    #[arg(long)]
    pub loaders: Option<usize>,
    /// Writer ranks (default: from the world size, see README).
    #[arg(long)]
    pub writers: Option<usize>,
    /// Encoders when running without mpirun (threads in one process).
    #[arg(long, default_value_t = 1)]
    pub local_encoders: usize,
    /// Threads each encoder uses for the model (0: the cores this process may use, shared among the
    /// encoders on this node).
    #[arg(long, env = "CHATSPACE_THREADS", default_value_t = 0)]
    #[serde(default)]
    pub threads: usize,
    /// Threads each loader tokenizes on (0: the cores the encoders leave on its node; 1 when encoders run on
    /// the CPU, whose model is hundreds of times slower than the tokenizer). Under Slurm with
    /// --cpus-per-task, each rank's own CPUs.
    #[arg(long, env = "CHATSPACE_LOADER_THREADS", default_value_t = 0)]
    #[serde(default)]
    pub loader_threads: usize,
    /// Tokenizer implementation: `auto` takes the fast exact path for BERT WordPiece tokenizers and the
    /// `tokenizers` crate otherwise; `fast` refuses tokenizers the fast path does not implement; `reference`
    /// always uses the `tokenizers` crate. The ids are the same.
    #[arg(long, env = "CHATSPACE_TOKENIZER", value_enum, default_value = "auto")]
    #[serde(default)]
    pub tokenizer: TokenizerChoice,
    /// Batches a loader may have in flight per encoder at the start; the window grows (up to 32) for an
    /// encoder that runs out of queued batches while the loader has more ready, so fast encoders are never
    /// starved by the round trip.
    #[arg(long, default_value_t = 2)]
    pub prefetch_batches: usize,
    /// Compute device: cpu, cuda (binaries built with the `cuda` feature: each encoder rank takes a GPU from
    /// its place on the node) or auto (cuda when a GPU is visible, else cpu).
    #[arg(long, env = "CHATSPACE_DEVICE", default_value = "cpu", value_parser = DEVICES)]
    pub device: String,
    /// `model` runs the model; `candle` runs BERT models on candle-transformers (the slower reference);
    /// `noop` skips the model and emits placeholder vectors (for plumbing benchmarks: loading, MPI and
    /// writing without the encoder's cost); `noop-tokenized` also skips the model but loaders tokenize for
    /// it (can the loaders feed the GPUs?). Recorded in the resume fingerprint.
    #[arg(long, value_enum, default_value = "model")]
    pub encoder: EncoderKind,
    /// Compute dtype: float32; float16 (cuda); bfloat16 (cuda, or on the CPU the linear layers of BERT models
    /// with AVX512_BF16: faster, embeddings differ slightly); int8 (CPU only, the linear layers of BERT models
    /// with AVX512-VNNI: fastest, embeddings differ more). See docs/benchmarks.md for speed and accuracy.
    /// Storage is `--precision`'s whatever the compute dtype (float32 by default).
    #[arg(long, env = "CHATSPACE_DTYPE", default_value = "float32", value_parser = DTYPES)]
    pub dtype: String,
    /// Rows longer than the model's max length: truncate (cut there, as sentence-transformers) or chunk
    /// (embed windows of the max length, each with the special tokens and the prompt, and store their mean
    /// weighted by tokens, normalized when the model normalizes). Either way such rows are counted
    /// (`rows_truncated` in the manifest).
    #[arg(long, env = "CHATSPACE_LONG_TEXT", value_enum, default_value = "truncate")]
    pub long_text: LongText,
    /// Keep the first N dimensions of each embedding (Matryoshka models; sentence-transformers'
    /// `truncate_dim`): cut after the model's own modules, Normalize included, and not normalized again.
    #[arg(long, env = "CHATSPACE_TRUNCATE_DIM")]
    pub truncate_dim: Option<usize>,
    /// How embeddings are stored, as sentence-transformers' `quantize_embeddings`: float32; float16; int8 or
    /// uint8 (per-dimension buckets between a calibration sample's minimum and maximum, recorded in the
    /// manifest and the shards); binary or ubinary (one bit per dimension, x > 0, 8 to a byte).
    #[arg(long, env = "CHATSPACE_PRECISION", default_value = "float32", value_parser = PRECISIONS)]
    pub precision: String,
    /// int8/uint8: rows embedded first to calibrate the ranges (eight blocks spread over the dataset).
    #[arg(long, env = "CHATSPACE_CALIBRATION_ROWS", default_value_t = 1000)]
    pub calibration_rows: usize,
    /// int8/uint8: take the ranges from this file instead (a manifest of another int8/uint8 run, or JSON
    /// `{"min": [...], "max": [...]}`), so that several outputs, or later queries, share one scale.
    #[arg(long, env = "CHATSPACE_CALIBRATION_RANGES")]
    pub calibration_ranges: Option<PathBuf>,
    /// Run id recorded in the manifest (default: from the start time).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Continue from an existing manifest: embed only the rows it does not cover (any world size).
    #[arg(long)]
    pub resume: bool,
    /// Seconds a drain (after SIGTERM/SIGINT/SIGUSR1/SIGUSR2) may take before the job stops at once, keeping
    /// what is committed. Fits Slurm's default KillWait (30 s).
    #[arg(long, env = "CHATSPACE_DRAIN_TIMEOUT", default_value_t = 20.0)]
    pub drain_timeout: f64,
    /// Seconds without a message from a rank (each sends a heartbeat every second) before the job counts it
    /// lost (node down, process killed) and ends with an error naming it; ranks that stop hearing from the
    /// controller end themselves after as long. 0 turns the check off.
    #[arg(long, env = "CHATSPACE_RANK_TIMEOUT", default_value_t = 60.0)]
    pub rank_timeout: f64,
    /// Resume if this output has a manifest, start otherwise (for batch scripts that rerun themselves).
    #[arg(long, conflicts_with_all = ["resume", "overwrite"])]
    pub auto_resume: bool,
    /// Delete existing output for this dataset/model/split first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Seconds of margin before the job's end time: the run drains by itself once the time left is below this
    /// plus its running estimate of drain time. The end time comes from --end-time or, under Slurm, squeue.
    #[arg(long, env = "CHATSPACE_STOP_BEFORE", default_value_t = 30.0)]
    pub stop_before: f64,
    /// Write "EXIT_CODE STATUS MANIFEST" to this file when the run ends (for batch scripts: launchers do
    /// not always pass rank 0's exit code through).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// The job's end time as Unix seconds (default: asked from Slurm when SLURM_JOB_ID is set).
    #[arg(long)]
    pub end_time: Option<f64>,
    /// No progress bar or progress log lines.
    #[arg(long, env = "CHATSPACE_NO_PROGRESS")]
    pub no_progress: bool,
    /// A live progress line rewritten in place even when stderr is not a terminal (under mpirun rank 0's
    /// stderr is a pipe to mpirun; use this when mpirun's is a terminal).
    #[arg(long, conflicts_with = "no_progress")]
    #[serde(default)]
    pub progress_bar: bool,
    /// Seconds between progress log lines when stderr is not a terminal (UTC-timestamped), and between
    /// refreshes of the run's live figures in the manifest header (at least 1 s) that `status` shows.
    #[arg(long, env = "CHATSPACE_PROGRESS_INTERVAL", default_value_t = 10.0)]
    pub progress_interval: f64,
}

impl EmbedArgs {
    /// The conversation handling asked for, if any.
    pub fn chat(&self) -> Option<ChatFormat> {
        if self.input.extract_first_assistant {
            Some(ChatFormat::FirstAssistant)
        } else {
            self.input.chat_format
        }
    }
}

/// `embed` flags parsed from the given extra arguments (after `--dataset d.jsonl --model m`), for tests.
/// Flags of `chatspace-mpi encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// A sentence-transformers model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input; each line's `--text-field` is embedded.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// cuda or auto take a GPU; float16 runs on cuda only, int8 on the cpu only.
    #[arg(long, default_value = "cpu", value_parser = DEVICES)]
    pub device: String,
    #[arg(long, default_value = "float32", value_parser = DTYPES)]
    pub dtype: String,
    /// Threads of the CPU encoder (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Batch sizes to time, comma-separated.
    #[arg(long, default_value = "32", value_delimiter = ',')]
    pub batch_sizes: Vec<usize>,
    /// Write `{"row": i, "embedding": [...]}` lines, in input order, for the first batch size.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Flags of `chatspace-mpi tokens` (those shared with `embed` mean the same).
#[derive(Debug, Clone, clap::Args)]
pub struct TokensArgs {
    /// The input and the model, as for `embed`.
    #[command(flatten)]
    pub input: InputArgs,
    /// Tokenizer threads (0: every core this process may use).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Tokenizer implementation, as for `embed`.
    #[arg(long, value_enum, default_value = "auto")]
    pub tokenizer: TokenizerChoice,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write `row_id` (uint64) and `ids` (list<int32>, special tokens included) of every embedded row to
    /// this Parquet file.
    #[arg(long)]
    pub ids_output: Option<PathBuf>,
}

/// Which tokenizer implementation to use (`--tokenizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerChoice {
    /// The fast path when the tokenizer.json is one it implements, `tokenizers` otherwise.
    #[default]
    Auto,
    /// The fast path; an error when the tokenizer.json has a feature it does not implement.
    Fast,
    /// Hugging Face `tokenizers` (the reference the fast path is tested against).
    Reference,
}

#[cfg(test)]
pub(crate) fn test_args(extra: &[&str]) -> EmbedArgs {
    let mut argv = vec!["chatspace-mpi", "embed", "--dataset", "d.jsonl", "--model", "m"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("test flags parse").command {
        Command::Embed(a) => a,
        _ => unreachable!("embed was parsed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let a = test_args(&[]);
        assert_eq!((a.input.text_field.as_str(), a.rows_per_shard, a.drain_timeout), ("text", 8192, 20.0));
    }

    #[test]
    fn resume_and_overwrite_conflict() {
        let argv = ["chatspace-mpi", "embed", "--dataset", "d", "--model", "m", "--resume", "--overwrite"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
