//! BERT-family encoder forward pass on the CPU: packed sequences (no padding), fused QKV, threads per batch.
//!
//! The batch's rows are packed back to back (a flat token batch), so no compute is spent on padding and no
//! attention mask is needed: attention runs per row and head over that row's tokens only. The batch is split
//! into contiguous groups of rows with about equal tokens, one per thread; each thread runs the whole stack
//! for its group with single-threaded GEMMs (no synchronisation between layers). Weights are stored once,
//! transposed to `in x out` so GEMMs read them row-major; Q, K and V are one `hidden x 3*hidden` GEMM.
//! Numerics are float32 throughout and match candle's `BertModel` (the reference backend) within 1e-5,
//! unless a bfloat16 or int8 mode is asked for (the linear layers only; see [`BertCpu::load_with`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::encoder::contract::{Dtype, EncoderError};
use crate::encoder::kernels;
use crate::encoder::parts::{config_error, read_config_json};
use crate::encoder::pool::{Packed, PackedModel};
use crate::model::ModelSpec;

/// The parts of a BERT config.json this forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    /// MPNet: the relative position buckets of its attention bias.
    #[serde(default)]
    pub relative_attention_num_buckets: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_eps() -> f64 {
    1e-12
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activation {
    /// `gelu`: exact, with erf.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    /// The activation of a candle tensor.
    pub(crate) fn tensor(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }

    /// A gated linear unit (GeGLU): each row of `up` (rows of `2 * inter`: the activated half, then the
    /// gate) becomes `act(first half) * second half` in `out` (rows of `inter`).
    pub(crate) fn gated(self, up: &[f32], out: &mut [f32], inter: usize) {
        for (g, u) in out.chunks_exact_mut(inter).zip(up.chunks_exact(2 * inter)) {
            g.copy_from_slice(&u[..inter]);
        }
        self.apply(out);
        for (g, u) in out.chunks_exact_mut(inter).zip(up.chunks_exact(2 * inter)) {
            for (a, b) in g.iter_mut().zip(&u[inter..]) {
                *a *= b;
            }
        }
    }

    /// The activation of every element of `x`, in place.
    pub(crate) fn apply(self, x: &mut [f32]) {
        match self {
            Activation::GeluErf => kernels::gelu_erf(x),
            Activation::GeluTanh => x.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + (0.797_884_6 * (*v + 0.044_715 * *v * *v * *v)).tanh())),
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

/// A linear layer for the CPU passes: float32 weights, and optionally the same in bfloat16 or int8.
pub(crate) struct Linear {
    /// `in x out`, row-major.
    wt: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    /// The same weights in bfloat16 or int8, when that mode is on (`--dtype bfloat16|int8`).
    low: LowPrecision,
}

/// A linear layer's weights for a faster, less exact mode.
enum LowPrecision {
    None,
    Bf16(kernels::Bf16Weights),
    Int8(kernels::Int8Weights),
}

impl Linear {
    /// `out (m x outputs) = x (m x inputs) * W^T + b`.
    pub(crate) fn forward(&self, x: &[f32], out: &mut Vec<f32>, m: usize) {
        out.resize(m * self.outputs, 0.0);
        match &self.low {
            LowPrecision::Bf16(w) => w.matmul_bias(x, &self.bias, out, m),
            LowPrecision::Int8(w) => w.matmul_bias(x, &self.bias, out, m),
            LowPrecision::None => kernels::matmul_bias(x, &self.wt, &self.bias, out, m, self.inputs, self.outputs),
        }
    }

    /// Switches to `dtype` (a layer whose shape the packed kernels do not take stays float32). For int8,
    /// `input_max` (the largest |input| per input channel seen in calibration) moves part of each input
    /// channel's range into the weights (SmoothQuant, alpha 1/2): channel c of the input is divided by
    /// `s_c = sqrt(input_max_c / weight_max_c)` and row c of the weights multiplied by it, which leaves the
    /// product unchanged and keeps a few large channels from taking the whole int8 range of every row.
    pub(crate) fn use_dtype(&mut self, dtype: Dtype, input_max: Option<&[f32]>) {
        let (k, n) = (self.inputs, self.outputs);
        self.low = match dtype {
            Dtype::Bf16 => kernels::Bf16Weights::pack(&self.wt, k, n).map_or(LowPrecision::None, LowPrecision::Bf16),
            Dtype::Int8 => {
                let smooth: Vec<f32> = match input_max {
                    Some(xmax) if xmax.len() == k => (0..k)
                        .map(|c| {
                            let wmax = self.wt[c * n..(c + 1) * n].iter().fold(0f32, |a, v| a.max(v.abs()));
                            let s = (xmax[c] / wmax).sqrt();
                            if s.is_finite() && s > 0.0 {
                                s.clamp(1e-3, 1e3)
                            } else {
                                1.0
                            }
                        })
                        .collect(),
                    _ => vec![1.0; k],
                };
                kernels::Int8Weights::pack_smoothed(&self.wt, k, n, &smooth).map_or(LowPrecision::None, LowPrecision::Int8)
            }
            Dtype::F32 | Dtype::F16 => LowPrecision::None,
        };
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Q, K and V side by side: `hidden x 3*hidden`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// Text the int8 mode calibrates on (see [`BertCpu::load_with`]): short and long, plain and technical,
/// a question, a list, code and numbers, so each layer sees the range of inputs real batches bring.
const CALIBRATION: &[&str] = &[
    "hi",
    "Thanks!",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on a small stage while people dance.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on the surface for about 2.5 hours.",
    "def add(a, b):\n    return a + b  # returns the sum of two numbers",
    "Ingredients: 2 cups flour, 1 tsp salt, 3 eggs, 250 ml milk. Whisk, rest for 30 minutes, then fry.",
    "The court held that the contract was void because one party lacked the capacity to consent at the time of signing.",
    "Can you explain the difference between a list and a tuple in Python, and when I should use each one?",
    "Sales rose 12% year over year to $4.3 billion, while operating margin narrowed from 18.1% to 16.4%.",
    "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors.",
    "Patients receiving the higher dose reported more headaches (p < 0.05) but no serious adverse events were observed.",
    "I loved this movie. The acting was great, the story kept me guessing, and the ending made me cry.",
    "To configure the server, set the PORT environment variable, run `make install`, and restart the service with systemctl.",
];

/// The bucket of a key at `relative` positions from its query (key minus query), as transformers'
/// `MPNetEncoder.relative_position_bucket` (MPNet's attention bias) with `max_distance` 128: half the buckets for keys before the
/// query, half for keys after; within each, exact distances below a quarter of the buckets, then
/// logarithmic up to 128.
pub fn relative_bucket(relative: i64, buckets: usize) -> usize {
    let half = (buckets / 2) as i64;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let exact = half / 2;
    bucket += if n < exact {
        n
    } else {
        let log = ((n as f64 / exact as f64).ln() / (128.0 / exact as f64).ln() * (half - exact) as f64) as i64;
        (exact + log).min(half - 1)
    };
    bucket as usize
}

/// The bucket of every key-minus-query distance within rows of up to `longest` tokens: entry
/// `distance + longest - 1` for distances `1 - longest ..= longest - 1`.
pub fn relative_buckets(longest: usize, buckets: usize) -> Vec<usize> {
    let span = (2 * longest).saturating_sub(1) as i64;
    (0..span).map(|i| relative_bucket(i - (longest as i64 - 1), buckets)).collect()
}

/// The weights of a BERT encoder, ready for [`BertCpu::forward_rows`].
pub struct BertCpu {
    hidden: usize,
    heads: usize,
    eps: f32,
    act: Activation,
    max_positions: usize,
    vocab: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding (single-segment input; zeros for MPNet, which has none).
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// RoBERTa-style positions (MPNet, XLM-RoBERTa): the padding index. Token `t` is then at position
    /// `pad + (tokens other than pad up to t)`, and a pad token at `pad` (transformers'
    /// `create_position_ids_from_input_ids`); BERT's positions are `0, 1, 2, ...`.
    padding_idx: Option<usize>,
    /// MPNet's relative position bias: `buckets x heads` and the bucket count.
    relative: Option<(Vec<f32>, usize)>,
}

/// Reads tensors by name from a safetensors file, whatever their float dtype.
pub(crate) struct Weights {
    st: candle_core::safetensors::MmapedSafetensors,
    prefix: String,
    file: String,
}

impl Weights {
    /// The folder's model.safetensors, memory-mapped; names are looked up under the first of `prefixes` that
    /// holds `probe`.
    pub(crate) fn open(folder: &Path, probe: &str, prefixes: &[String]) -> Result<Weights, EncoderError> {
        let weights = folder.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only and only read while loading.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&weights) }
            .map_err(|e| EncoderError::BadWeights { file: weights.display().to_string(), message: e.to_string() })?;
        let mut w = Weights { st, prefix: String::new(), file: weights.display().to_string() };
        for prefix in prefixes {
            w.prefix = prefix.clone();
            if w.has(probe) {
                break;
            }
        }
        Ok(w)
    }

    fn has(&self, name: &str) -> bool {
        self.st.get(&format!("{}{name}", self.prefix)).is_ok()
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, EncoderError> {
        let full = format!("{}{name}", self.prefix);
        let t =
            self.st.load(&full, &Device::Cpu).map_err(|e| EncoderError::BadWeights { file: self.file.clone(), message: format!("{full}: {e}") })?;
        if t.dims() != shape {
            return Err(EncoderError::BadWeights {
                file: self.file.clone(),
                message: format!("{full} has shape {:?}, config.json implies {shape:?}", t.dims()),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    pub(crate) fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EncoderError> {
        Ok(self.get(name, shape)?.flatten_all()?.to_vec1()?)
    }

    /// A `Linear` stored as PyTorch does (`out x in`), transposed to `in x out`.
    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, EncoderError> {
        self.linear_with(name, inputs, outputs, true)
    }

    /// [`Weights::linear`]; without `bias` the layer has none (zeros).
    pub(crate) fn linear_with(&self, name: &str, inputs: usize, outputs: usize, bias: bool) -> Result<Linear, EncoderError> {
        let wt = self.get(&format!("{name}.weight"), &[outputs, inputs])?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        let bias = if bias { self.vec(&format!("{name}.bias"), &[outputs])? } else { vec![0.0; outputs] };
        Ok(Linear { wt, bias, inputs, outputs, low: LowPrecision::None })
    }

    /// Linear layers (full names, `outputs[i]` each) side by side as one `in x sum(outputs)` layer: Q, K and V
    /// of grouped-query attention, a gate and its up projection.
    pub(crate) fn stacked(&self, names: &[String], inputs: usize, outputs: &[usize], bias: bool) -> Result<Linear, EncoderError> {
        let mut ws = Vec::with_capacity(names.len());
        let mut b = Vec::new();
        for (name, &o) in names.iter().zip(outputs) {
            ws.push(self.get(&format!("{name}.weight"), &[o, inputs])?);
            b.extend(if bias { self.vec(&format!("{name}.bias"), &[o])? } else { vec![0.0; o] });
        }
        let wt = Tensor::cat(&ws, 0)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Linear { wt, bias: b, inputs, outputs: outputs.iter().sum(), low: LowPrecision::None })
    }

    /// Q, K and V (named `parts`) fused into one `in x 3*out` matrix.
    fn fused_qkv(&self, name: &str, parts: [&str; 3], h: usize) -> Result<Linear, EncoderError> {
        let mut ws = Vec::new();
        let mut bias = Vec::with_capacity(3 * h);
        for p in parts {
            ws.push(self.get(&format!("{name}.{p}.weight"), &[h, h])?);
            bias.extend(self.vec(&format!("{name}.{p}.bias"), &[h])?);
        }
        let w = Tensor::cat(&ws, 0)?; // (3h, h)
        let wt = w.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Linear { wt, bias, inputs: h, outputs: 3 * h, low: LowPrecision::None })
    }

    /// LayerNorm parameters, named weight/bias or (older checkpoints) gamma/beta.
    fn norm(&self, name: &str, h: usize) -> Result<Norm, EncoderError> {
        let (g, b) = if self.has(&format!("{name}.weight")) { ("weight", "bias") } else { ("gamma", "beta") };
        Ok(Norm { gamma: self.vec(&format!("{name}.{g}"), &[h])?, beta: self.vec(&format!("{name}.{b}"), &[h])? })
    }
}

/// A model folder's config.json, checked for what both BERT forward passes (this one and `bert_candle`)
/// support, with its activation.
pub(crate) fn read_config(folder: &Path) -> Result<(BertConfig, Activation), EncoderError> {
    let bad = |message: String| config_error(folder, message);
    let c: BertConfig = read_config_json(folder)?;
    let act = match c.hidden_act.as_str() {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => return Err(bad(format!("hidden_act \"{other}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"))),
    };
    if let Some(p) = c.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
        return Err(bad(format!("position_embedding_type \"{p}\" is not supported (absolute)")));
    }
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err(bad(format!("hidden_size {} is not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads)));
    }
    Ok((c, act))
}

impl BertCpu {
    /// Loads config.json and model.safetensors from a sentence-transformers model folder.
    pub fn load(folder: &Path) -> Result<BertCpu, EncoderError> {
        Self::load_with(folder, Dtype::F32)
    }

    /// As [`BertCpu::load`], with the linear layers in `dtype`: bfloat16 (AVX512_BF16, float32
    /// accumulation) or int8 (AVX512-VNNI, int32 accumulation) while embeddings, layer norms, attention and
    /// pooling stay float32. Float16 is refused (CUDA only).
    pub fn load_with(folder: &Path, dtype: Dtype) -> Result<BertCpu, EncoderError> {
        if dtype == Dtype::F16 {
            return Err(EncoderError::Setting("--dtype float16 runs on CUDA GPUs only (--device cuda); on cpu use float32".into()));
        }
        dtype.cpu_has_instructions().map_err(EncoderError::Setting)?;
        let mut model = Self::load_f32(folder)?;
        if dtype == Dtype::F32 {
            return Ok(model);
        }
        // int8: the largest |input| of each linear layer's input channels over a fixed calibration text.
        let input_max = if dtype == Dtype::Int8 { Some(model.calibrate(folder)?) } else { None };
        for (i, layer) in model.layers.iter_mut().enumerate() {
            for (j, linear) in [&mut layer.qkv, &mut layer.attn_out, &mut layer.up, &mut layer.down].into_iter().enumerate() {
                linear.use_dtype(dtype, input_max.as_ref().map(|m: &Vec<[Vec<f32>; 4]>| m[i][j].as_slice()));
            }
        }
        Ok(model)
    }

    /// Runs the float32 model over [`CALIBRATION`] (tokenized with the folder's tokenizer.json) and returns,
    /// per layer, the largest |input| per input channel of its four linear layers (qkv, attention output,
    /// up, down).
    fn calibrate(&self, folder: &Path) -> Result<Vec<[Vec<f32>; 4]>, EncoderError> {
        let file = folder.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| EncoderError::BadWeights { file: file.display().to_string(), message: e.to_string() })?;
        let (mut ids, mut lengths) = (Vec::new(), Vec::new());
        for text in CALIBRATION {
            let enc = tok.encode(*text, true).map_err(|e| EncoderError::BadWeights { file: file.display().to_string(), message: e.to_string() })?;
            let row = &enc.get_ids()[..enc.get_ids().len().min(self.max_positions)];
            ids.extend_from_slice(row);
            lengths.push(row.len() as u32);
        }
        let mut max: Vec<[Vec<f32>; 4]> =
            self.layers.iter().map(|l| [l.qkv.inputs, l.attn_out.inputs, l.up.inputs, l.down.inputs].map(|k| vec![0f32; k])).collect();
        self.forward_observed(&ids, &lengths, &mut |layer, which, x| {
            let m = &mut max[layer][which];
            for row in x.chunks_exact(m.len()) {
                for (a, v) in m.iter_mut().zip(row) {
                    *a = a.max(v.abs());
                }
            }
        })?;
        Ok(max)
    }

    fn load_f32(folder: &Path) -> Result<BertCpu, EncoderError> {
        let (c, act) = read_config(folder)?;
        // Checkpoints saved from a task model prefix the encoder with "bert." (or the model type).
        let prefixes: Vec<String> =
            ["", "bert.", "roberta."].into_iter().map(String::from).chain(c.model_type.as_ref().map(|t| format!("{t}."))).collect();
        let w = Weights::open(folder, "embeddings.word_embeddings.weight", &prefixes)?;
        let h = c.hidden_size;
        // MPNet: the same layers under other names, positions after the padding index, no token types, and a
        // relative position bias in attention.
        let mpnet = c.model_type.as_deref() == Some("mpnet");
        let (attention, parts, attn_out, attn_norm) = if mpnet {
            ("attention.attn", ["q", "k", "v"], "attention.attn.o", "attention.LayerNorm")
        } else {
            ("attention.self", ["query", "key", "value"], "attention.output.dense", "attention.output.LayerNorm")
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: w.fused_qkv(&format!("{p}.{attention}"), parts, h)?,
                attn_out: w.linear(&format!("{p}.{attn_out}"), h, h)?,
                attn_norm: w.norm(&format!("{p}.{attn_norm}"), h)?,
                up: w.linear(&format!("{p}.intermediate.dense"), h, c.intermediate_size)?,
                down: w.linear(&format!("{p}.output.dense"), c.intermediate_size, h)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let type_name = "embeddings.token_type_embeddings.weight";
        let token_type: Vec<f32> = if mpnet {
            vec![0.0; h]
        } else {
            let token_types = w.st.get(&format!("{}{type_name}", w.prefix)).map(|v| v.shape().first().copied().unwrap_or(0)).unwrap_or(0);
            w.vec(type_name, &[token_types.max(1), h])?[..h].to_vec()
        };
        let roberta_positions = mpnet || matches!(c.model_type.as_deref(), Some("xlm-roberta" | "roberta"));
        let padding_idx = roberta_positions.then(|| c.pad_token_id.unwrap_or(1));
        let position_offset = padding_idx.map_or(0, |p| p + 1);
        let buckets = c.relative_attention_num_buckets.unwrap_or(32);
        if position_offset >= c.max_position_embeddings || (mpnet && buckets < 4) {
            return Err(config_error(
                folder,
                format!(
                    "pad_token_id {} (below max_position_embeddings {} - 1) or relative_attention_num_buckets {buckets} (at least 4) out of range",
                    c.pad_token_id.unwrap_or(1),
                    c.max_position_embeddings
                ),
            ));
        }
        let relative =
            if mpnet { Some((w.vec("encoder.relative_attention_bias.weight", &[buckets, c.num_attention_heads])?, buckets)) } else { None };
        Ok(BertCpu {
            padding_idx,
            relative,
            hidden: h,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps as f32,
            act,
            max_positions: c.max_position_embeddings - position_offset,
            vocab: c.vocab_size,
            word: w.vec("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: w.vec("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?,
            token_type,
            emb_norm: w.norm("embeddings.LayerNorm", h)?,
            layers,
        })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Last hidden states of packed rows: `ids` holds the rows back to back, `lengths` their token counts.
    /// Returns `sum(lengths) x hidden`, row-major, on the calling thread.
    pub fn forward_rows(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError> {
        self.forward_observed(ids, lengths, &mut |_, _, _| {})
    }

    /// [`BertCpu::forward_rows`], showing `observe(layer, linear, input)` the input of each linear layer
    /// (0 qkv, 1 attention output, 2 up, 3 down).
    fn forward_observed(&self, ids: &[u32], lengths: &[u32], observe: &mut dyn FnMut(usize, usize, &[f32])) -> Result<Vec<f32>, EncoderError> {
        let h = self.hidden;
        let m = ids.len();
        let mut x = vec![0f32; m * h];
        let mut at = 0;
        for &n in lengths {
            let n = n as usize;
            if n == 0 || n > self.max_positions {
                return Err(EncoderError::Batch(format!("row length {n} outside 1..={}", self.max_positions)));
            }
            let mut counted = 0;
            for t in 0..n {
                let id = ids[at + t] as usize;
                if id >= self.vocab {
                    return Err(EncoderError::Batch(format!("token id {id} outside the vocabulary ({})", self.vocab)));
                }
                let row = &mut x[(at + t) * h..(at + t + 1) * h];
                let p = match self.padding_idx {
                    None => t,
                    Some(pad) if id == pad => pad,
                    Some(pad) => {
                        counted += 1;
                        pad + counted
                    }
                };
                let (word, pos) = (&self.word[id * h..(id + 1) * h], &self.position[p * h..(p + 1) * h]);
                for (((o, w), p), ty) in row.iter_mut().zip(word).zip(pos).zip(&self.token_type) {
                    *o = w + p + ty;
                }
            }
            at += n;
        }
        kernels::layer_norm(&mut x, &self.emb_norm.gamma, &self.emb_norm.beta, self.eps);
        let (mut qkv, mut ctx, mut y, mut inter) = (Vec::new(), vec![0f32; m * h], Vec::new(), Vec::new());
        let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
        let mut scores = vec![0f32; longest * longest];
        let relative = self.relative_bias(longest);
        for (i, layer) in self.layers.iter().enumerate() {
            observe(i, 0, &x);
            layer.qkv.forward(&x, &mut qkv, m);
            self.attention(&qkv, lengths, &mut ctx, &mut scores, &relative);
            observe(i, 1, &ctx);
            layer.attn_out.forward(&ctx, &mut y, m);
            kernels::add_layer_norm(&mut y, &x, &layer.attn_norm.gamma, &layer.attn_norm.beta, self.eps);
            // y is the attention block's output; the feed-forward block reads it and writes x.
            observe(i, 2, &y);
            layer.up.forward(&y, &mut inter, m);
            self.act.apply(&mut inter);
            observe(i, 3, &inter);
            layer.down.forward(&inter, &mut x, m);
            kernels::add_layer_norm(&mut x, &y, &layer.out_norm.gamma, &layer.out_norm.beta, self.eps);
        }
        Ok(x)
    }

    /// MPNet's relative position bias for rows of up to `longest` tokens, per head: entry `longest - 1 + k - q`
    /// is the bias of key `k` for query `q` (so a query's row of biases is one contiguous slice). Empty for BERT.
    fn relative_bias(&self, longest: usize) -> Vec<Vec<f32>> {
        let Some((table, buckets)) = &self.relative else { return Vec::new() };
        let by_distance = relative_buckets(longest, *buckets);
        (0..self.heads).map(|head| by_distance.iter().map(|&b| table[b * self.heads + head]).collect()).collect()
    }

    /// Scaled dot-product attention of each row and head over that row's own tokens (plus `relative`, the
    /// relative position bias per head, when the model has one).
    fn attention(&self, qkv: &[f32], lengths: &[u32], ctx: &mut [f32], scores: &mut [f32], relative: &[Vec<f32>]) {
        let d = self.hidden / self.heads;
        let layout = kernels::QkvLayout { heads: self.heads, kv_heads: self.heads, head_dim: d };
        kernels::packed_attention(qkv, layout, lengths, 1.0 / (d as f32).sqrt(), None, ctx, scores, |head, s, n| {
            if let Some(bias) = relative.get(head) {
                // Query row `r`'s biases for keys 0..n: entries centre - r .. centre - r + n.
                let centre = bias.len().div_ceil(2) - 1;
                for (r, row) in s.chunks_exact_mut(n).enumerate() {
                    kernels::add_assign(row, &bias[centre - r..centre - r + n]);
                }
            }
        });
    }
}

impl PackedModel for BertCpu {
    fn hidden(&self) -> usize {
        self.hidden
    }

    fn forward_rows(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError> {
        BertCpu::forward_rows(self, ids, lengths)
    }
}

/// The BERT backend: [`BertCpu`] plus pooling, with each batch split over threads.
pub type BertCpuBackend = Packed<BertCpu>;

impl BertCpuBackend {
    pub fn load(spec: &ModelSpec, threads: usize, dtype: Dtype) -> Result<Self, EncoderError> {
        Packed::new(BertCpu::load_with(Path::new(&spec.path), dtype)?, spec, threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_buckets_are_transformers() {
        // Values of transformers' MPNetEncoder.relative_position_bucket (num_buckets 32, max_distance 128).
        let cases = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-16, 10),
            (-31, 11),
            (-32, 12),
            (-64, 14),
            (-90, 14),
            (-91, 15),
            (-128, 15),
            (-500, 15),
            (1, 17),
            (7, 23),
            (8, 24),
            (16, 26),
            (128, 31),
            (600, 31),
        ];
        for (relative, want) in cases {
            assert_eq!(relative_bucket(relative, 32), want, "relative position {relative}");
        }
    }
}
