//! Sentence-transformers model folders: what they declare (architecture, pooling, normalize, max length),
//! the tokenizer, and the `Backend` contract that encoders run, with the candle BERT backend behind it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::TokenBatch;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder not found: {0}")]
    NotFound(String),
    #[error("model folder {folder} is missing {file}")]
    MissingFile { folder: String, file: String },
    #[error("{file}: {message}")]
    BadFile { file: String, message: String },
    #[error("{file}: unsupported architecture '{arch}' (supported: bert, qwen3)")]
    Unsupported { file: String, arch: String },
    #[error("{file}: pooling modes '{mode}': one mode is supported (cls_token, mean_tokens, max_tokens, mean_sqrt_len_tokens, weightedmean_tokens or lasttoken), not none or several together")]
    Pooling { file: String, mode: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("batch: {0}")]
    Batch(String),
    /// A setting this model or machine cannot run (e.g. `--dtype bfloat16` without AVX512_BF16).
    #[error("{0}")]
    Setting(String),
}

/// How token vectors become one vector: the modes of sentence-transformers' Pooling module, with its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean of the row's tokens.
    Mean,
    /// The first token.
    Cls,
    /// The last token.
    LastToken,
    /// Per dimension, the largest value over the row's tokens.
    Max,
    /// The sum of the row's tokens over the square root of their count.
    #[serde(rename = "mean_sqrt_len_tokens")]
    MeanSqrtLen,
    /// Tokens weighted by their position (1, 2, 3, ...), over the sum of the weights.
    WeightedMean,
}

impl Pooling {
    /// The name manifests and shard metadata use.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::LastToken => "lasttoken",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
        }
    }

    /// The `pooling_mode_*` flags of 1_Pooling/config.json and the mode each turns on.
    pub const FLAGS: [(&'static str, Pooling); 6] = [
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_max_tokens", Pooling::Max),
        ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ("pooling_mode_weightedmean_tokens", Pooling::WeightedMean),
        ("pooling_mode_lasttoken", Pooling::LastToken),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Bert,
    Qwen3,
}

/// What a model folder declares; small and serializable so it travels in the plan and the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub path: String,
    pub name: String,
    pub architecture: Architecture,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub dim: usize,
    pub weights_sha256: String,
    /// Named prompts from config_sentence_transformers.json and the one used by default.
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub default_prompt_name: Option<String>,
    /// `hf://{repo}@{sha}` for a model from the Hub.
    #[serde(default)]
    pub source: Option<String>,
    /// The Pooling module's `include_prompt`: false leaves prompt tokens out of pooling.
    #[serde(default = "yes")]
    pub include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// The largest JSON file of a model folder read (tokenizer.json files of large vocabularies are tens of MiB).
const JSON_MAX_BYTES: u64 = 64 << 20;

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let bad = |message: String| ModelError::BadFile { file: path.display().to_string(), message };
    let bytes = crate::output::read_input(path, JSON_MAX_BYTES).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))
}

/// A file the folder must have, as a regular file (links are followed: Hub caches are made of them).
fn require(folder: &Path, file: &str) -> Result<PathBuf, ModelError> {
    let p = folder.join(file);
    if p.is_file() {
        Ok(p)
    } else if p.exists() {
        Err(ModelError::BadFile { file: p.display().to_string(), message: "not a regular file (a folder, FIFO, socket or device)".into() })
    } else {
        Err(ModelError::MissingFile { folder: folder.display().to_string(), file: file.to_string() })
    }
}

/// Checks the config.json fields the encoders size things by: counts that must be positive integers when
/// present, and head counts that must divide. An error names the field and its value.
fn check_config_fields(config: &serde_json::Value, file: &Path) -> Result<(), ModelError> {
    let bad = |message: String| ModelError::BadFile { file: file.display().to_string(), message };
    let field = |k: &str| config.get(k).filter(|v| !v.is_null());
    for k in ["hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings"] {
        if let Some(v) = field(k) {
            if !v.as_u64().is_some_and(|n| (1..=1 << 24).contains(&n)) {
                return Err(bad(format!("{k} must be a whole number from 1 to {} (it is {v})", 1 << 24)));
            }
        }
    }
    if let Some(v) = field("num_hidden_layers") {
        if v.as_u64().is_none_or(|n| n > 4096) {
            return Err(bad(format!("num_hidden_layers must be a whole number from 0 to 4096 (it is {v})")));
        }
    }
    for k in ["layer_norm_eps", "rms_norm_eps", "rope_theta"] {
        if let Some(v) = field(k) {
            if !v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0) {
                return Err(bad(format!("{k} must be a positive number (it is {v})")));
            }
        }
    }
    let count = |k: &str| field(k).and_then(|v| v.as_u64());
    if let (Some(h), Some(n)) = (count("hidden_size"), count("num_attention_heads")) {
        if count("head_dim").is_none() && !h.is_multiple_of(n) {
            return Err(bad(format!("hidden_size {h} is not a multiple of num_attention_heads {n}")));
        }
    }
    if let (Some(n), Some(kv)) = (count("num_attention_heads"), count("num_key_value_heads")) {
        if !n.is_multiple_of(kv) {
            return Err(bad(format!("num_attention_heads {n} is not a multiple of num_key_value_heads {kv}")));
        }
    }
    Ok(())
}

impl ModelSpec {
    /// Reads and checks a sentence-transformers folder (no weights are loaded; their sha256 is taken).
    pub fn load(folder: &Path, name: Option<&str>) -> Result<ModelSpec, ModelError> {
        if !folder.is_dir() {
            return Err(ModelError::NotFound(folder.display().to_string()));
        }
        let modules_path = require(folder, "modules.json")?;
        let modules: Vec<ModuleEntry> = serde_json::from_value(read_json(&modules_path)?)
            .map_err(|e| ModelError::BadFile { file: modules_path.display().to_string(), message: e.to_string() })?;
        let config_path = require(folder, "config.json")?;
        require(folder, "tokenizer.json")?;
        let weights = require(folder, "model.safetensors")?;
        let config = read_json(&config_path)?;
        check_config_fields(&config, &config_path)?;
        let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let archs: Vec<String> = config
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let architecture = if model_type == "bert" || archs.iter().any(|a| a.starts_with("Bert")) {
            Architecture::Bert
        } else if model_type == "qwen3" || archs.iter().any(|a| a.starts_with("Qwen3")) {
            Architecture::Qwen3
        } else {
            let arch = if model_type.is_empty() { archs.join(",") } else { model_type };
            return Err(ModelError::Unsupported { file: config_path.display().to_string(), arch });
        };
        let dim = config
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::BadFile { file: config_path.display().to_string(), message: "no hidden_size".into() })?
            as usize;
        let max_pos = config.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(512) as usize;

        let mut pooling = Pooling::Cls; // transformers' default when no Pooling module: not used by ST models
        let mut has_pooling = false;
        let mut include_prompt = true;
        let mut normalize = false;
        for m in &modules {
            if m.kind.ends_with("models.Pooling") {
                let file = format!("{}/config.json", m.path);
                let pcfg = read_json(&require(folder, &file)?)?;
                let on = |k: &str| pcfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                let modes: Vec<&(&str, Pooling)> = Pooling::FLAGS.iter().filter(|(k, _)| on(k)).collect();
                pooling = match modes.as_slice() {
                    [(_, one)] => *one,
                    other => {
                        let names: Vec<&str> = other.iter().map(|(f, _)| f.trim_start_matches("pooling_mode_")).collect();
                        return Err(ModelError::Pooling { file: folder.join(&file).display().to_string(), mode: names.join(" + ") });
                    }
                };
                include_prompt = pcfg.get("include_prompt").and_then(|v| v.as_bool()).unwrap_or(true);
                has_pooling = true;
            } else if m.kind.ends_with("models.Normalize") {
                normalize = true;
            }
        }
        if !has_pooling {
            return Err(ModelError::BadFile { file: modules_path.display().to_string(), message: "no Pooling module".into() });
        }
        let sbert = folder.join("sentence_bert_config.json");
        let max_seq_length = if sbert.is_file() {
            match read_json(&sbert)?.get("max_seq_length").filter(|v| !v.is_null()) {
                None => max_pos,
                Some(v) => v.as_u64().filter(|&n| n >= 1).ok_or_else(|| ModelError::BadFile {
                    file: sbert.display().to_string(),
                    message: format!("max_seq_length must be a whole number of at least 1 (it is {v})"),
                })? as usize,
            }
        } else {
            max_pos
        }
        .min(max_pos);
        let st_config = folder.join("config_sentence_transformers.json");
        let (prompts, default_prompt_name) = if st_config.is_file() {
            let c = read_json(&st_config)?;
            let prompts = c
                .get("prompts")
                .and_then(|p| p.as_object())
                .map(|p| p.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
                .unwrap_or_default();
            (prompts, c.get("default_prompt_name").and_then(|v| v.as_str()).map(String::from))
        } else {
            Default::default()
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => std::fs::canonicalize(folder)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into()),
        };
        Ok(ModelSpec {
            path: folder.display().to_string(),
            name,
            architecture,
            pooling,
            normalize,
            max_seq_length,
            dim,
            weights_sha256: sha256_file(&weights).map_err(|e| ModelError::BadFile { file: weights.display().to_string(), message: e.to_string() })?,
            prompts,
            default_prompt_name,
            source: None,
            include_prompt,
        })
    }

    /// The text put before every input: `--prompt`, else `--prompt-name`, else the model's default prompt.
    pub fn resolve_prompt(&self, prompt: Option<&str>, prompt_name: Option<&str>) -> Result<String, String> {
        let chosen = self.choose_prompt(prompt, prompt_name)?;
        if !chosen.is_empty() && !self.include_prompt && !matches!(self.pooling, Pooling::Cls | Pooling::LastToken) {
            // sentence-transformers would pool without the prompt's tokens; this crate does not do that yet.
            return Err(format!(
                "a prompt with this model: its Pooling config sets include_prompt false (prompt tokens left out of {} pooling), which is not supported; embed without --prompt/--prompt-name, or with a model that includes the prompt",
                self.pooling.name()
            ));
        }
        Ok(chosen)
    }

    fn choose_prompt(&self, prompt: Option<&str>, prompt_name: Option<&str>) -> Result<String, String> {
        if let Some(p) = prompt {
            return Ok(p.to_string());
        }
        match prompt_name.map(String::from).or_else(|| self.default_prompt_name.clone()) {
            None => Ok(String::new()),
            Some(name) => self.prompts.get(&name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.prompts.keys().map(String::as_str).collect();
                format!(
                    "--prompt-name {name}: the model has no such prompt (it has: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )
            }),
        }
    }

    /// Loads the encoder for this model's architecture: BERT on this crate's CPU forward pass (or on candle's
    /// `BertModel` with `opts.reference`), Qwen3 on candle. Only the CPU BERT has bfloat16 and int8 modes.
    pub fn backend(&self, opts: BackendOptions) -> Result<Box<dyn Backend>, ModelError> {
        if let Some(ordinal) = opts.gpu {
            let device = cuda_device(ordinal)?;
            let dtype = match opts.dtype {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::Bf16 => DType::BF16,
                Dtype::Int8 => {
                    return Err(ModelError::Setting(
                        "--dtype int8 runs on the CPU only (BERT models); on cuda use float32, float16 or bfloat16".into(),
                    ))
                }
            };
            return Ok(match self.architecture {
                Architecture::Bert => Box::new(crate::bert_candle::BertCandleBackend::load(self, &device, dtype)?),
                Architecture::Qwen3 => Box::new(Qwen3Backend::load_on(self, &device, dtype)?),
            });
        }
        match opts.dtype {
            Dtype::F32 => {}
            Dtype::F16 => {
                return Err(ModelError::Setting("--dtype float16 runs on CUDA GPUs only (--device cuda); on cpu use float32 or bfloat16".into()))
            }
            Dtype::Bf16 if opts.reference || self.architecture != Architecture::Bert => {
                return Err(ModelError::Setting(
                    "--dtype bfloat16 on cpu is supported by the BERT CPU encoder only (--encoder model, BERT models); use float32".into(),
                ))
            }
            Dtype::Int8 if opts.reference || self.architecture != Architecture::Bert => {
                return Err(ModelError::Setting(
                    "--dtype int8 is supported by the BERT CPU encoder only (--encoder model, BERT models); use float32".into(),
                ))
            }
            Dtype::Bf16 | Dtype::Int8 => {}
        }
        Ok(match self.architecture {
            Architecture::Bert if opts.reference => Box::new(BertBackend::load(self)?),
            Architecture::Bert => Box::new(crate::bert::BertCpuBackend::load(self, opts.threads, opts.dtype)?),
            Architecture::Qwen3 => Box::new(Qwen3Backend::load_on(self, &Device::Cpu, DType::F32)?),
        })
    }

    /// The tokenizer with truncation at `max_seq_length` and no fixed padding (tokenizer.json files often
    /// ship padding/truncation settings of their own that would change results).
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, ModelError> {
        hf_tokenizer(&Path::new(&self.path).join("tokenizer.json"), self.max_seq_length).map_err(|e| match e {
            ModelError::Setting(m) => ModelError::Setting(format!("{}: {m}", self.path)),
            e => e,
        })
    }
}

/// A tokenizer.json loaded by `tokenizers`, truncating at `max_seq_length` (special tokens included), no padding.
pub fn hf_tokenizer(path: &Path, max_seq_length: usize) -> Result<tokenizers::Tokenizer, ModelError> {
    let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
    // The special tokens the tokenizer adds must leave room for text (tokenizers panics otherwise).
    let added = tok.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
    if max_seq_length <= added {
        return Err(ModelError::Setting(format!(
            "max_seq_length {max_seq_length} leaves no room for text: the tokenizer adds {added} special tokens to every input"
        )));
    }
    let mut trunc = tok.get_truncation().cloned().unwrap_or_default();
    trunc.max_length = max_seq_length;
    tok.with_truncation(Some(trunc)).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_padding(None);
    Ok(tok)
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = crate::output::open_input(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compute dtype (`--dtype`). Embeddings are written as float32 whatever it is.
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
    pub fn parse(s: &str) -> Option<Dtype> {
        [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Int8].into_iter().find(|d| d.name() == s)
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
}

/// How [`ModelSpec::backend`] builds the encoder.
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

/// The candle device of CUDA GPU `ordinal`.
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device, ModelError> {
    Err(ModelError::Setting("--device cuda: this binary was built without CUDA (scripts/build-cuda.sh builds one)".into()))
}

/// The encoder contract: token batches in, `rows x dim` float32 embeddings out (pooled, normalized if the
/// model says so).
pub trait Backend: Send {
    fn dim(&self) -> usize;
    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, ModelError>;
    /// Whether a batch costs its padded rectangle (rows x longest row) rather than its tokens.
    fn pads(&self) -> bool {
        false
    }
}

/// A model folder's config.json as `C`, and its float32 weights (memory-mapped) on the CPU.
fn load_parts<C: serde::de::DeserializeOwned>(spec: &ModelSpec) -> Result<(C, candle_nn::VarBuilder<'static>, Device), ModelError> {
    load_parts_on(spec, &Device::Cpu, DType::F32)
}

/// As [`load_parts`], on `device` with weights converted to `dtype`.
fn load_parts_on<C: serde::de::DeserializeOwned>(
    spec: &ModelSpec,
    device: &Device,
    dtype: DType,
) -> Result<(C, candle_nn::VarBuilder<'static>, Device), ModelError> {
    let folder = Path::new(&spec.path);
    let config_path = folder.join("config.json");
    let config: C = serde_json::from_value(read_json(&config_path)?)
        .map_err(|e| ModelError::BadFile { file: config_path.display().to_string(), message: e.to_string() })?;
    let device = device.clone();
    let weights = folder.join("model.safetensors");
    // SAFETY: the weights file is memory-mapped read-only; we do not modify it while the model lives.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], dtype, &device)? };
    Ok((config, vb, device))
}

/// Placeholder vectors without running a model, for measuring the pipeline around the encoder. Values are a
/// cheap hash of the row id, length and first tokens (random mantissas, so shards compress like real floats),
/// normalized like real embeddings.
pub struct NoopBackend {
    pub dim: usize,
}

impl Backend for NoopBackend {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(batch.rows() * self.dim);
        let mut at = 0;
        for (&n, &row) in batch.lengths.iter().zip(&batch.row_ids) {
            // A vector of the row id, the length and the first 64 token ids: rows with the same text get
            // different vectors (as real data would: no long repeats that compress away), runs with any
            // layout the same ones.
            let ids = &batch.ids[at..at + n as usize];
            let seed =
                ids.iter().take(64).fold(row.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n as u64, |h, &t| (h ^ t as u64).wrapping_mul(0x100_0000_01b3));
            at += n as usize;
            let start = out.len();
            // 32 random bits per element (wyrand): random sign and mantissa, and a magnitude that halves with
            // probability 1/2 per step from [1/16, 1/8), like the entries of a normalized 384-dim embedding:
            // such vectors compress like real ones (~85% of their size under byte-stream-split + zstd).
            let mut state = seed;
            for _ in 0..self.dim.div_ceil(2) {
                state = state.wrapping_add(0xa076_1d64_78bd_642f);
                let t = (state as u128) * ((state ^ 0xe703_7ed1_a0b4_28db) as u128);
                let r = (t >> 64) as u64 ^ t as u64;
                for half in [r as u32, (r >> 32) as u32] {
                    let halvings = ((half >> 23) & 0xff | 0x100).trailing_zeros();
                    out.push(f32::from_bits((half & 0x807f_ffff) | ((0x7b - halvings) << 23)));
                }
            }
            out.truncate(start + self.dim);
            let row = &mut out[start..];
            let scale = 1.0 / crate::kernels::norm(row).max(1e-12);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(out)
    }
}

/// BERT-family encoder on candle-transformers' `BertModel` (CPU): the reference for `crate::bert`.
pub struct BertBackend {
    model: candle_transformers::models::bert::BertModel,
    spec: ModelSpec,
    device: Device,
}

impl BertBackend {
    pub fn load(spec: &ModelSpec) -> Result<Self, ModelError> {
        let (config, vb, device) = load_parts::<candle_transformers::models::bert::Config>(spec)?;
        let model = candle_transformers::models::bert::BertModel::load(vb, &config)?;
        Ok(BertBackend { model, spec: spec.clone(), device })
    }
}

impl Backend for BertBackend {
    fn dim(&self) -> usize {
        self.spec.dim
    }

    fn pads(&self) -> bool {
        true
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, ModelError> {
        embed_padded(&self.spec, &self.device, batch, |ids, mask| Ok(self.model.forward(ids, &ids.zeros_like()?, Some(mask))?))
    }
}

/// Qwen3 (e.g. Qwen3-Embedding) on candle: a causal decoder whose last token is pooled. Each row runs on
/// its own (no padding, so left/right padding cannot change results); candle's Qwen3 keeps a KV cache, so
/// every row starts from a clean copy of the model (the weights are shared, not copied).
pub struct Qwen3Backend {
    model: candle_transformers::models::qwen3::Model,
    spec: ModelSpec,
    device: Device,
}

impl Qwen3Backend {
    /// On `device` (the CPU or a CUDA GPU) with weights in `dtype`.
    pub fn load_on(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let (config, vb, device) = load_parts_on::<candle_transformers::models::qwen3::Config>(spec, device, dtype)?;
        // sentence-transformers saves the bare Qwen3Model (no "model." prefix); candle expects the prefix.
        let vb = vb.rename_f(|name| name.strip_prefix("model.").unwrap_or(name).to_string());
        let model = candle_transformers::models::qwen3::Model::new(&config, vb)?;
        Ok(Qwen3Backend { model, spec: spec.clone(), device })
    }
}

impl Backend for Qwen3Backend {
    fn dim(&self) -> usize {
        self.spec.dim
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, ModelError> {
        let dim = self.spec.dim;
        let mut out = Vec::with_capacity(batch.rows() * dim);
        let mut at = 0;
        for &n in &batch.lengths {
            let n = n as usize;
            if n == 0 || n > self.spec.max_seq_length {
                return Err(ModelError::Batch(format!("row length {n} outside 1..={}", self.spec.max_seq_length)));
            }
            let ids = Tensor::from_slice(&batch.ids[at..at + n], (1, n), &self.device)?;
            at += n;
            let hidden = self.model.clone().forward(&ids, 0)?; // (1, n, dim), fresh KV cache
            let hidden: Vec<f32> = hidden.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            out.extend(pool(&hidden, &[n as u32], n, dim, self.spec.pooling, self.spec.normalize));
        }
        Ok(out)
    }
}

/// Rejects rows a model cannot take: empty ones (every row has at least its special tokens) and ones longer
/// than `max`.
pub fn check_lengths(batch: &TokenBatch, max: usize) -> Result<(), ModelError> {
    match batch.lengths.iter().find(|&&n| n == 0 || n as usize > max) {
        Some(&n) => Err(ModelError::Batch(format!("row length {n} outside 1..={max}"))),
        None => Ok(()),
    }
}

/// Embeds a batch with a model that takes it right-padded, as `(ids, mask)` tensors `(rows, len)` on `device`
/// (mask 1 on tokens, 0 on padding), and returns hidden states `(rows, len, dim)`; then pools on the host.
pub fn embed_padded(
    spec: &ModelSpec,
    device: &Device,
    batch: &TokenBatch,
    forward: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor, ModelError>,
) -> Result<Vec<f32>, ModelError> {
    if batch.rows() == 0 {
        return Ok(Vec::new());
    }
    check_lengths(batch, spec.max_seq_length)?;
    let (b, l) = (batch.rows(), batch.max_len());
    let (ids, mask) = pad_right(batch, l);
    let (ids, mask) = (Tensor::from_vec(ids, (b, l), device)?, Tensor::from_vec(mask, (b, l), device)?);
    let hidden: Vec<f32> = forward(&ids, &mask)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(pool(&hidden, &batch.lengths, l, spec.dim, spec.pooling, spec.normalize))
}

/// Right-pads a flat token batch to `len` columns; returns ids and the attention mask.
pub fn pad_right(batch: &TokenBatch, len: usize) -> (Vec<u32>, Vec<u32>) {
    let b = batch.rows();
    let mut ids = vec![0u32; b * len];
    let mut mask = vec![0u32; b * len];
    let mut at = 0;
    for (r, &n) in batch.lengths.iter().enumerate() {
        let n = n as usize;
        ids[r * len..r * len + n].copy_from_slice(&batch.ids[at..at + n]);
        mask[r * len..r * len + n].fill(1);
        at += n;
    }
    (ids, mask)
}

/// Pools `hidden` (`rows x len x dim`, right-padded) into `rows x dim`, then L2-normalizes if asked.
pub fn pool(hidden: &[f32], lengths: &[u32], len: usize, dim: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let mut out = vec![0f32; lengths.len() * dim];
    for (r, &n) in lengths.iter().enumerate() {
        let n = n as usize;
        let row = &mut out[r * dim..(r + 1) * dim];
        let tok = |t: usize| &hidden[(r * len + t) * dim..(r * len + t + 1) * dim];
        match pooling {
            Pooling::Cls => row.copy_from_slice(tok(0)),
            Pooling::LastToken => row.copy_from_slice(tok(n - 1)),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                for t in 0..n {
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o += v;
                    }
                }
                let count = n.max(1) as f32;
                let inv = 1.0 / if pooling == Pooling::Mean { count } else { count.sqrt() };
                row.iter_mut().for_each(|o| *o *= inv);
            }
            Pooling::Max => {
                // Over the row's own tokens (sentence-transformers sets padding to -1e9 first); rows have one.
                row.fill(f32::NEG_INFINITY);
                for t in 0..n {
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o = o.max(*v);
                    }
                }
            }
            Pooling::WeightedMean => {
                for t in 0..n {
                    let w = (t + 1) as f32;
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o += w * v;
                    }
                }
                let inv = 1.0 / ((n * (n + 1) / 2).max(1) as f32);
                row.iter_mut().for_each(|o| *o *= inv);
            }
        }
        if normalize {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_on_a_padded_batch() {
        // 2 rows, len 3, dim 2. Row 0 has 2 tokens, row 1 has 3.
        let hidden = [1., 2., 3., 4., 99., 99., 1., 0., 0., 1., 2., 2.];
        let lens = [2, 3];
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Mean, false), vec![2., 3., 1., 1.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Cls, false), vec![1., 2., 1., 0.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::LastToken, false), vec![3., 4., 2., 2.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Max, false), vec![3., 4., 2., 2.]);
        for p in [Pooling::Mean, Pooling::Cls, Pooling::LastToken, Pooling::Max, Pooling::MeanSqrtLen, Pooling::WeightedMean] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "the manifest's name is the metadata's");
        }
        let s = pool(&hidden, &lens, 3, 2, Pooling::MeanSqrtLen, false);
        assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6 && (s[1] - 6.0 / 2f32.sqrt()).abs() < 1e-6, "{s:?}");
        // Weights 1 and 2 (position + 1) over their sum 3: (1*1 + 2*3) / 3, (1*2 + 2*4) / 3.
        let w = pool(&hidden, &lens, 3, 2, Pooling::WeightedMean, false);
        assert!((w[0] - 7.0 / 3.0).abs() < 1e-6 && (w[1] - 10.0 / 3.0).abs() < 1e-6, "{w:?}");
        let n = pool(&hidden, &lens, 3, 2, Pooling::LastToken, true);
        assert!((n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn noop_vectors_are_unit_length_and_depend_on_row_and_tokens() {
        let mut b = NoopBackend { dim: 7 };
        let batch = TokenBatch { row_ids: vec![0, 1, 2], lengths: vec![2, 2, 1], ids: vec![5, 6, 5, 6, 7] };
        let v = b.embed(&batch).unwrap();
        assert_eq!(v.len(), 21);
        assert_ne!(&v[0..7], &v[7..14], "same tokens, another row");
        assert_ne!(&v[0..7], &v[14..21]);
        for row in v.chunks(7) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // The same row in another batch gets the same vector.
        let again = b.embed(&TokenBatch { row_ids: vec![1], lengths: vec![2], ids: vec![5, 6] }).unwrap();
        assert_eq!(&again[..], &v[7..14]);
    }

    #[test]
    fn pad_right_builds_ids_and_mask() {
        let b = TokenBatch { row_ids: vec![0, 1], lengths: vec![1, 3], ids: vec![7, 1, 2, 3] };
        let (ids, mask) = pad_right(&b, 3);
        assert_eq!(ids, vec![7, 0, 0, 1, 2, 3]);
        assert_eq!(mask, vec![1, 0, 0, 1, 1, 1]);
    }

    fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        d
    }

    const MODULES: &str = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;

    #[test]
    fn folder_errors_name_the_missing_file_and_architecture() {
        let d = folder_with(&[("modules.json", MODULES), ("config.json", r#"{"model_type":"bert","hidden_size":8}"#)]);
        let e = ModelSpec::load(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("missing tokenizer.json"), "{e}");
        let d = folder_with(&[
            ("modules.json", MODULES),
            ("config.json", r#"{"model_type":"t5","hidden_size":8}"#),
            ("tokenizer.json", "{}"),
            ("model.safetensors", ""),
            ("1_Pooling/config.json", r#"{"pooling_mode_mean_tokens":true}"#),
        ]);
        let e = ModelSpec::load(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("unsupported architecture 't5'"), "{e}");
        let e = ModelSpec::load(Path::new("/nonexistent/model"), None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/model"), "{e}");
    }

    #[test]
    fn spec_reads_pooling_normalize_and_max_length() {
        let d = folder_with(&[
            ("modules.json", &MODULES.replace("]", r#",{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#)),
            ("config.json", r#"{"model_type":"bert","hidden_size":8,"max_position_embeddings":512}"#),
            ("tokenizer.json", "{}"),
            ("model.safetensors", "w"),
            ("sentence_bert_config.json", r#"{"max_seq_length":256}"#),
            ("1_Pooling/config.json", r#"{"pooling_mode_cls_token":true}"#),
        ]);
        let s = ModelSpec::load(d.path(), Some("m")).unwrap();
        assert_eq!((s.pooling, s.normalize, s.max_seq_length, s.dim), (Pooling::Cls, true, 256, 8));
        assert!(s.prompts.is_empty());
        assert_eq!(s.resolve_prompt(None, None).unwrap(), "");
        assert_eq!(s.resolve_prompt(Some("x: "), Some("ignored")).unwrap(), "x: ");
        assert!(s.resolve_prompt(None, Some("query")).unwrap_err().contains("--prompt-name query"));
        assert_eq!(s.weights_sha256, "50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326");
    }
}
