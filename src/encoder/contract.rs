//! The encoder contract: a flat token batch in, `rows x dim` float32 embeddings out, the options an encoder is
//! built with, and its errors. Small on purpose: the pipeline (loaders, the wire, the `encode` command) sees
//! only this; the backends behind it are the heavy part.

use serde::{Deserialize, Serialize};

use crate::encoder::kernels;
use crate::model::ModelError;

/// A tokenized batch as it travels from a loader to an encoder: rows packed back to back, no padding.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub row_ids: Vec<u64>,
    pub lengths: Vec<u32>,
    /// All rows' token ids back to back.
    pub ids: Vec<u32>,
}

impl TokenBatch {
    pub fn rows(&self) -> usize {
        self.row_ids.len()
    }

    pub fn max_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0) as usize
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

/// The encoder: token batches in, `rows x dim` float32 embeddings out (pooled, normalized if the model says
/// so). One runs per encoder thread; nothing is shared between them but read-only weights.
pub trait Backend: Send {
    fn dim(&self) -> usize;
    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError>;
    /// Whether a batch costs its padded rectangle (rows x longest row) rather than its tokens.
    fn pads(&self) -> bool {
        false
    }
}

/// Compute dtype (`--dtype`). Embeddings are written as float32 whatever it is. Which architecture takes
/// which dtype where is the rule table of `encoder::select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    #[serde(rename = "float32")]
    F32,
    /// CUDA only.
    #[serde(rename = "float16")]
    F16,
    /// On CUDA; on the CPU, the BERT linear layers with AVX512_BF16 (float32 elsewhere).
    #[serde(rename = "bfloat16")]
    Bf16,
    /// CPU only: the BERT linear layers in int8 with AVX512-VNNI (weights per column, activations per
    /// row, int32 accumulation; float32 elsewhere).
    #[serde(rename = "int8")]
    Int8,
}

impl Dtype {
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Int8];

    pub fn parse(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The `--dtype` name (also what the manifest and the shards' metadata record).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::Int8 => "int8",
        }
    }

    /// Whether this CPU has the instructions the dtype's CPU mode needs (float32 runs anywhere); the refusal
    /// names the flag and the instruction set.
    pub fn cpu_has_instructions(self) -> Result<(), String> {
        match self {
            Dtype::Bf16 if !kernels::has_bf16_dot() => Err("--dtype bfloat16: this CPU has no AVX512_BF16; use float32".into()),
            Dtype::Int8 if !kernels::has_int8_dot() => Err("--dtype int8: this CPU has no AVX512-VNNI; use float32".into()),
            _ => Ok(()),
        }
    }
}

/// Where encoders run (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when a GPU is visible, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Auto => "auto",
        }
    }
}

/// How `encoder::load` builds the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendOptions {
    /// Threads per batch (CPU BERT).
    pub threads: usize,
    /// candle-transformers' `BertModel` instead of this crate's BERT (the reference; slower; CPU).
    pub reference: bool,
    pub dtype: Dtype,
    /// The CUDA device ordinal, or `None` for the CPU.
    pub gpu: Option<usize>,
}

impl BackendOptions {
    /// This crate's float32 CPU encoder with `threads` threads.
    pub fn cpu(threads: usize) -> Self {
        BackendOptions { threads, reference: false, dtype: Dtype::F32, gpu: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// What the model folder declares is wrong (config.json, tokenizer.json, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A weights file that does not hold what config.json says.
    #[error("{file}: {message}")]
    BadWeights { file: String, message: String },
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("batch: {0}")]
    Batch(String),
    /// A setting this model or machine cannot run (e.g. `--dtype bfloat16` without AVX512_BF16).
    #[error("{0}")]
    Setting(String),
}
