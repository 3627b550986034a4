//! Sentence-transformers model folders: what they declare (architecture, pooling, normalize, max length,
//! prompts) and their tokenizer. Nothing here runs a model: that is `crate::encoder`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model folder not found: {0}")]
    NotFound(String),
    #[error("model folder {folder} is missing {file}")]
    MissingFile { folder: String, file: String },
    #[error("{file}: {message}")]
    BadFile { file: String, message: String },
    #[error("{file}: unsupported architecture '{arch}' (its model_type; supported: {})", Architecture::names())]
    Unsupported { file: String, arch: String },
    #[error("{file}: pooling modes '{mode}': one mode is supported (cls_token, mean_tokens, max_tokens, mean_sqrt_len_tokens, weightedmean_tokens or lasttoken), not none or several together")]
    Pooling { file: String, mode: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A setting this model cannot take (a max length that leaves no room for text).
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

/// The architecture, from config.json's `model_type` (the name transformers' `AutoConfig` goes by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Bert,
    Mpnet,
    Qwen3,
    /// XLM-RoBERTa (multilingual-e5, bge-m3, paraphrase-multilingual-mpnet): BERT with positions after the
    /// padding index.
    #[serde(rename = "xlm-roberta")]
    XlmRoberta,
    /// RoBERTa (all-distilroberta-v1, all-roberta-large-v1): the same layers and positions as XLM-RoBERTa,
    /// with a byte-level BPE tokenizer.
    Roberta,
    /// ModernBERT (gte-modernbert, modernbert-embed): rotary positions, GeGLU, global and sliding-window layers.
    #[serde(rename = "modernbert")]
    ModernBert,
    /// Gemma3 as a bidirectional encoder (embeddinggemma): `gemma3_text` with `use_bidirectional_attention`.
    #[serde(rename = "gemma3_text")]
    Gemma3Text,
}

impl Architecture {
    pub const ALL: [Architecture; 6] =
        [Architecture::Bert, Architecture::Mpnet, Architecture::Qwen3, Architecture::XlmRoberta, Architecture::ModernBert, Architecture::Gemma3Text];

    /// config.json's `model_type` (also the manifest's name).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Mpnet => "mpnet",
            Architecture::Qwen3 => "qwen3",
            Architecture::XlmRoberta => "xlm-roberta",
            Architecture::Roberta => "roberta",
            Architecture::ModernBert => "modernbert",
            Architecture::Gemma3Text => "gemma3_text",
        }
    }

    fn names() -> String {
        Architecture::ALL.map(Architecture::name).join(", ")
    }
}

/// The part of config.json that says what the model is.
#[derive(Deserialize)]
struct ModelType {
    model_type: Option<serde_json::Value>,
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
    /// Dense modules after pooling, in order (before Normalize).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<DenseSpec>,
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

/// A Dense module: `activation(W x + b)`, plus `x` (or `R x` when the sizes differ) with `use_residual`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseSpec {
    /// Its folder inside the model folder (`2_Dense`).
    pub path: String,
    /// Its weights file in that folder: model.safetensors, else pytorch_model.bin.
    pub weights: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: Activation,
    #[serde(default)]
    pub residual: bool,
    pub weights_sha256: String,
}

/// The activations sentence-transformers writes into a Dense config (`activation_function`, a torch class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    /// Exact (erf) GELU: `torch.nn.GELU()` as sentence-transformers builds it.
    Gelu,
    Sigmoid,
    Silu,
}

impl Activation {
    /// The torch class names of each.
    pub const TORCH: [(&'static str, Activation); 6] = [
        ("torch.nn.modules.linear.Identity", Activation::Identity),
        ("torch.nn.modules.activation.Tanh", Activation::Tanh),
        ("torch.nn.modules.activation.ReLU", Activation::Relu),
        ("torch.nn.modules.activation.GELU", Activation::Gelu),
        ("torch.nn.modules.activation.Sigmoid", Activation::Sigmoid),
        ("torch.nn.modules.activation.SiLU", Activation::Silu),
    ];
}

/// What the modules after the Transformer declare.
struct Modules {
    pooling: Pooling,
    include_prompt: bool,
    dense: Vec<DenseSpec>,
    normalize: bool,
}

/// The class of a modules.json entry, whichever package path the saving version used
/// (`sentence_transformers.models.Pooling`, `sentence_transformers.base.modules.pooling.Pooling`, ...).
fn class_of(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

/// Reads the module sequence sentence-transformers runs: Transformer, Pooling, any Dense modules, and
/// optionally Normalize, in that order. Anything else is refused by name: it would change the vectors.
fn read_modules(folder: &Path, modules_path: &Path, modules: &[ModuleEntry], hidden: usize) -> Result<Modules, ModelError> {
    let bad = |file: &Path, message: String| ModelError::BadFile { file: file.display().to_string(), message };
    let order = "the supported sequence is Transformer, Pooling, Dense modules, Normalize";
    let mut pooling: Option<(Pooling, bool)> = None;
    let mut dense: Vec<DenseSpec> = Vec::new();
    let mut normalize = false;
    for (i, m) in modules.iter().enumerate() {
        let class = class_of(&m.kind);
        let misplaced = || bad(modules_path, format!("module {i} ({}) is out of place: {order}", m.kind));
        match class {
            "Transformer" if i == 0 => {}
            "Pooling" if i == 1 => {
                let file = folder.join(&m.path).join("config.json");
                pooling = Some(read_pooling(&read_json(&require(folder, &format!("{}/config.json", m.path))?)?, &file, hidden)?);
            }
            "Dense" if pooling.is_some() && !normalize => {
                let before = dense.last().map_or(hidden, |d: &DenseSpec| d.out_features);
                dense.push(read_dense(folder, &m.path, before)?);
            }
            "Normalize" if pooling.is_some() && !normalize => normalize = true,
            "Transformer" | "Pooling" | "Dense" | "Normalize" => return Err(misplaced()),
            _ => return Err(bad(modules_path, format!("module {i} ({}) is not supported: {order}", m.kind))),
        }
    }
    let Some((pooling, include_prompt)) = pooling else {
        return Err(bad(modules_path, format!("no Pooling module: {order}")));
    };
    Ok(Modules { pooling, include_prompt, dense, normalize })
}

/// A Pooling config: `pooling_mode` (a name, or a list of one) as sentence-transformers 5.2+ saves it, or the
/// older `pooling_mode_*` flags; neither is sentence-transformers' default, mean.
fn read_pooling(cfg: &serde_json::Value, file: &Path, hidden: usize) -> Result<(Pooling, bool), ModelError> {
    let refuse = |mode: String| ModelError::Pooling { file: file.display().to_string(), mode };
    let pooling = if let Some(mode) = cfg.get("pooling_mode").filter(|v| !v.is_null()) {
        let names: Vec<String> = match mode {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a.iter().map(|v| v.as_str().map_or(v.to_string(), String::from)).collect(),
            other => vec![other.to_string()],
        };
        match names.as_slice() {
            [one] => Pooling::FLAGS.iter().map(|(_, p)| *p).find(|p| p.name() == one).ok_or_else(|| refuse(one.clone()))?,
            several => return Err(refuse(several.join(" + "))),
        }
    } else if Pooling::FLAGS.iter().any(|(k, _)| cfg.get(k).is_some()) {
        let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let modes: Vec<&(&str, Pooling)> = Pooling::FLAGS.iter().filter(|(k, _)| on(k)).collect();
        match modes.as_slice() {
            [(_, one)] => *one,
            other => return Err(refuse(other.iter().map(|(f, _)| f.trim_start_matches("pooling_mode_")).collect::<Vec<_>>().join(" + "))),
        }
    } else {
        Pooling::Mean
    };
    for key in ["embedding_dimension", "word_embedding_dimension"] {
        if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
            if v.as_u64() != Some(hidden as u64) {
                return Err(ModelError::BadFile {
                    file: file.display().to_string(),
                    message: format!("{key} {v} differs from the transformer's hidden_size {hidden}"),
                });
            }
        }
    }
    Ok((pooling, cfg.get("include_prompt").and_then(|v| v.as_bool()).unwrap_or(true)))
}

/// A Dense module's config.json and weights file; `before`: the dimensions the module before it makes.
fn read_dense(folder: &Path, path: &str, before: usize) -> Result<DenseSpec, ModelError> {
    let file = folder.join(path).join("config.json");
    let cfg = read_json(&require(folder, &format!("{path}/config.json"))?)?;
    let bad = |message: String| ModelError::BadFile { file: file.display().to_string(), message };
    let size = |k: &str| -> Result<usize, ModelError> {
        cfg.get(k).and_then(|v| v.as_u64()).filter(|n| (1..=1 << 20).contains(n)).map(|n| n as usize).ok_or_else(|| {
            bad(format!("{k} must be a whole number from 1 to {} (it is {})", 1 << 20, cfg.get(k).unwrap_or(&serde_json::Value::Null)))
        })
    };
    let (in_features, out_features) = (size("in_features")?, size("out_features")?);
    if in_features != before {
        return Err(bad(format!("in_features {in_features} does not chain: the module before it makes {before} dimensions")));
    }
    let activation = match cfg.get("activation_function").filter(|v| !v.is_null()) {
        // sentence-transformers' default.
        None => Activation::Tanh,
        Some(v) => {
            let name = v.as_str().unwrap_or_default();
            Activation::TORCH.iter().find(|(t, _)| *t == name).map(|(_, a)| *a).ok_or_else(|| {
                let known: Vec<&str> = Activation::TORCH.iter().map(|(t, _)| t.rsplit('.').next().unwrap_or(t)).collect();
                bad(format!("activation_function {v} is not supported (supported: torch.nn {})", known.join(", ")))
            })?
        }
    };
    for key in ["module_input_name", "module_output_name"] {
        if let Some(v) = cfg.get(key).filter(|v| !v.is_null() && v.as_str() != Some("sentence_embedding")) {
            return Err(bad(format!("{key} {v}: only a Dense on the sentence embedding is supported")));
        }
    }
    let flag = |k: &str, default: bool| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(default);
    let weights = ["model.safetensors", "pytorch_model.bin"].into_iter().find(|w| folder.join(path).join(w).is_file()).ok_or_else(|| {
        ModelError::MissingFile { folder: folder.join(path).display().to_string(), file: "model.safetensors (or pytorch_model.bin)".into() }
    })?;
    let weights_file = folder.join(path).join(weights);
    Ok(DenseSpec {
        path: path.to_string(),
        weights: weights.to_string(),
        in_features,
        out_features,
        bias: flag("bias", true),
        activation,
        residual: flag("use_residual", false),
        weights_sha256: sha256_file(&weights_file)
            .map_err(|e| ModelError::BadFile { file: weights_file.display().to_string(), message: e.to_string() })?,
    })
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
        let architecture = match serde_json::from_value::<ModelType>(config.clone()).ok().and_then(|t| t.model_type) {
            None => return Err(ModelError::BadFile { file: config_path.display().to_string(), message: "no model_type".into() }),
            Some(t) => serde_json::from_value::<Architecture>(t.clone()).map_err(|_| ModelError::Unsupported {
                file: config_path.display().to_string(),
                arch: t.as_str().map_or(t.to_string(), String::from),
            })?,
        };
        let dim = config
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::BadFile { file: config_path.display().to_string(), message: "no hidden_size".into() })?
            as usize;
        let positions = config.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(512) as usize;
        // RoBERTa-style positions start after the padding index: that many fewer tokens fit.
        let max_pos = match architecture {
            Architecture::Mpnet | Architecture::XlmRoberta | Architecture::Roberta => {
                let pad = config.get("pad_token_id").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
                positions.saturating_sub(pad + 1).max(1)
            }
            Architecture::Bert | Architecture::Qwen3 | Architecture::ModernBert | Architecture::Gemma3Text => positions,
        };

        let Modules { pooling, include_prompt, dense, normalize } = read_modules(folder, &modules_path, &modules, dim)?;
        // sentence-transformers' order: sentence_bert_config.json's max_seq_length (up to version 5), else the
        // tokenizer's model_max_length (where version 6 saves it), else the model's positions.
        let sbert = folder.join("sentence_bert_config.json");
        let from_sbert = match sbert.is_file() {
            true => match read_json(&sbert)?.get("max_seq_length").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(v.as_u64().filter(|&n| n >= 1).ok_or_else(|| ModelError::BadFile {
                    file: sbert.display().to_string(),
                    message: format!("max_seq_length must be a whole number of at least 1 (it is {v})"),
                })? as usize),
            },
            false => None,
        };
        let tokenizer_config = folder.join("tokenizer_config.json");
        let from_tokenizer = match (from_sbert, tokenizer_config.is_file()) {
            (None, true) => read_json(&tokenizer_config)?
                .get("model_max_length")
                .and_then(|v| v.as_u64())
                // transformers writes a huge number (1e30) for "no limit".
                .filter(|n| (1..1 << 40).contains(n))
                .map(|n| n as usize),
            _ => None,
        };
        let max_seq_length = from_sbert.or(from_tokenizer).unwrap_or(max_pos).min(max_pos);
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
            dense,
        })
    }

    /// The dimensions of the embeddings the model makes: the last Dense module's, else the hidden size.
    pub fn output_dim(&self) -> usize {
        self.dense.last().map_or(self.dim, |d| d.out_features)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn module_names_and_pooling_configs_of_every_sentence_transformers_version_are_read() {
        // sentence-transformers 6 names modules by their new packages and writes `pooling_mode`.
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.base.modules.transformer.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.base.modules.normalize.Normalize"}]"#;
        for (pooling_config, want) in [
            (r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken"}"#, Ok(Pooling::LastToken)),
            (r#"{"pooling_mode": ["weightedmean"]}"#, Ok(Pooling::WeightedMean)),
            (r#"{"word_embedding_dimension": 8, "pooling_mode_max_tokens": true}"#, Ok(Pooling::Max)),
            ("{}", Ok(Pooling::Mean)),
            (r#"{"pooling_mode": "median"}"#, Err("pooling modes 'median'")),
            (r#"{"pooling_mode_mean_tokens": false}"#, Err("pooling modes ''")),
            (r#"{"embedding_dimension": 16, "pooling_mode": "mean"}"#, Err("embedding_dimension 16 differs from the transformer's hidden_size 8")),
        ] {
            let d = folder_with(&[
                ("modules.json", modules),
                ("config.json", r#"{"model_type":"bert","hidden_size":8}"#),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "w"),
                ("1_Pooling/config.json", pooling_config),
            ]);
            match (ModelSpec::load(d.path(), None), want) {
                (Ok(s), Ok(p)) => assert_eq!((s.pooling, s.normalize, s.output_dim()), (p, true, 8), "{pooling_config}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w) && e.to_string().contains("1_Pooling/config.json"), "{pooling_config}: {e}"),
                (got, want) => panic!("{pooling_config}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn max_seq_length_is_taken_where_each_sentence_transformers_version_saves_it() {
        // (sentence_bert_config.json, tokenizer_config.json, model_type and positions) -> max_seq_length.
        for (sbert, tokenizer, config, want) in [
            (Some(r#"{"max_seq_length": 64}"#), Some(r#"{"model_max_length": 100}"#), r#"{"model_type":"bert","hidden_size":8}"#, 64),
            (None, Some(r#"{"model_max_length": 100}"#), r#"{"model_type":"bert","hidden_size":8}"#, 100),
            (Some("{}"), Some(r#"{"model_max_length": 1000000000000000019884624838656}"#), r#"{"model_type":"bert","hidden_size":8}"#, 512),
            (None, None, r#"{"model_type":"bert","hidden_size":8,"max_position_embeddings":300}"#, 300),
            (None, Some(r#"{"model_max_length": 512}"#), r#"{"model_type":"xlm-roberta","hidden_size":8,"max_position_embeddings":514}"#, 512),
            (None, None, r#"{"model_type":"xlm-roberta","hidden_size":8,"max_position_embeddings":130,"pad_token_id":1}"#, 128),
            (None, None, r#"{"model_type":"mpnet","hidden_size":8,"max_position_embeddings":514}"#, 512),
        ] {
            let mut files = vec![
                ("modules.json", MODULES),
                ("config.json", config),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "w"),
                ("1_Pooling/config.json", r#"{"pooling_mode": "mean"}"#),
            ];
            files.extend(sbert.map(|b| ("sentence_bert_config.json", b)));
            files.extend(tokenizer.map(|b| ("tokenizer_config.json", b)));
            let d = folder_with(&files);
            assert_eq!(ModelSpec::load(d.path(), None).unwrap().max_seq_length, want, "{sbert:?} {tokenizer:?} {config}");
        }
    }
}
