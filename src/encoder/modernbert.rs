//! ModernBERT (`model_type` modernbert: gte-modernbert, modernbert-embed and their family): a packed CPU
//! forward pass as `bert.rs`'s ([`ModernBertCpu`]), and one on candle tensor ops for CUDA GPUs in any float
//! dtype and the CPU reference, `--encoder candle` ([`ModernBertCandle`]).
//!
//! Pre-norm layers without biases (unless config.json asks for them): LayerNorm -> fused QKV attention with
//! rotary positions -> residual, LayerNorm -> GeGLU MLP (`act(x W_in) * (x W_gate)`) -> residual; the first
//! layer has no attention norm (the embedding norm precedes it) and a final norm follows the last. Layers
//! alternate between global attention and a sliding window (a token sees keys at most `local_attention / 2`
//! away), each kind with its own RoPE theta. config.json comes in two layouts, both read: the Hub's
//! (`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`) and transformers 5's (`layer_types`,
//! `rope_parameters`).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::encoder::bert::{self, Activation, Weights};
use crate::encoder::bert_candle::{padding_bias, window_bias};
use crate::encoder::contract::{Dtype, EncoderError};
use crate::encoder::kernels;
use crate::encoder::parts::{config_error, read_config_json};
use crate::encoder::pool::{check_packed, Packed, PackedModel, Padded, PaddedModel};
use crate::encoder::rope::{rope_angles, rope_tables, rotate, sliding_layers, theta, RopeParameters};
use crate::model::ModelSpec;

/// The parts of a ModernBERT config.json this forward pass uses, in either layout.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_act")]
    hidden_activation: String,
    #[serde(default = "default_window")]
    local_attention: usize,
    /// transformers 5: `full_attention` or `sliding_attention` per layer.
    layer_types: Option<Vec<String>>,
    /// The Hub's layout: every n-th layer (from 0) is global, the rest slide.
    global_attn_every_n_layers: Option<usize>,
    /// transformers 5: `{"full_attention": {"rope_theta": ..}, "sliding_attention": {..}}`.
    rope_parameters: Option<RopeParameters>,
    global_rope_theta: Option<f64>,
    local_rope_theta: Option<f64>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_act() -> String {
    "gelu".into()
}

fn default_window() -> usize {
    128
}

/// What a config.json settles: per layer whether it slides, the two thetas, the activation.
#[derive(Debug, Clone, PartialEq)]
struct Settled {
    sliding: Vec<bool>,
    global_theta: f64,
    local_theta: f64,
    act: Activation,
}

impl Config {
    fn settle(&self) -> Result<Settled, String> {
        let act = match self.hidden_activation.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(format!("hidden_activation \"{other}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)")),
        };
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(2) {
            return Err(format!("the head size {} must be even for rotary positions", self.hidden_size / self.num_attention_heads));
        }
        let sliding = match (&self.layer_types, self.global_attn_every_n_layers) {
            (Some(types), _) => sliding_layers(types, self.num_hidden_layers)?,
            (None, every) => {
                let n = every.unwrap_or(3);
                if n == 0 {
                    return Err("global_attn_every_n_layers must be at least 1".into());
                }
                (0..self.num_hidden_layers).map(|i| i % n != 0).collect()
            }
        };
        let rope = self.rope_parameters.as_ref();
        Ok(Settled {
            sliding,
            global_theta: theta(rope.and_then(|r| r.full_attention.as_ref()), self.global_rope_theta, 160_000.0, "full_attention")?,
            local_theta: theta(rope.and_then(|r| r.sliding_attention.as_ref()), self.local_rope_theta, 10_000.0, "sliding_attention")?,
            act,
        })
    }
}

/// A folder's config.json, read and settled.
fn read_config(folder: &Path) -> Result<(Config, Settled), EncoderError> {
    let c: Config = read_config_json(folder)?;
    let s = c.settle().map_err(|m| config_error(folder, m))?;
    Ok((c, s))
}

struct Layer {
    /// `None` on layer 0 (transformers' `nn.Identity`).
    attn_norm: Option<LayerNorm>,
    qkv: Linear,
    attn_out: Linear,
    mlp_norm: LayerNorm,
    /// `hidden -> 2 x intermediate`: the activated half, then the gate.
    wi: Linear,
    wo: Linear,
    sliding: bool,
}

/// A ModernBERT encoder's weights on a candle device.
pub struct ModernBertCandle {
    word: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rope: (Tensor, Tensor),
    local_rope: (Tensor, Tensor),
    heads: usize,
    /// Keys farther than this from the query are outside a sliding layer's window.
    half_window: usize,
    act: Activation,
    max_len: usize,
    dtype: DType,
    device: Device,
}

fn layer_norm(vb: &VarBuilder, h: usize, eps: f64, bias: bool) -> Result<LayerNorm, EncoderError> {
    let w = vb.get(h, "weight")?;
    Ok(if bias { LayerNorm::new(w, vb.get(h, "bias")?, eps) } else { LayerNorm::new_no_bias(w, eps) })
}

fn linear(vb: &VarBuilder, inputs: usize, outputs: usize, bias: bool) -> Result<Linear, EncoderError> {
    let b = if bias { Some(vb.get(outputs, "bias")?) } else { None };
    Ok(Linear::new(vb.get((outputs, inputs), "weight")?, b))
}

impl ModernBertCandle {
    /// Loads a sentence-transformers ModernBERT folder onto `device`, weights converted to `dtype`.
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<ModernBertCandle, EncoderError> {
        let (c, s) = read_config(folder)?;
        let weights = folder.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; we do not modify it while loading.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device)? };
        // ModernBertModel saves `embeddings.*`, ModernBertForMaskedLM `model.embeddings.*`.
        let vb = if root.contains_tensor("model.embeddings.tok_embeddings.weight") { root.pp("model") } else { root };
        let (h, eps) = (c.hidden_size, c.norm_eps);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (i, &sliding) in s.sliding.iter().enumerate() {
            let l = vb.pp(format!("layers.{i}"));
            layers.push(Layer {
                attn_norm: if i == 0 { None } else { Some(layer_norm(&l.pp("attn_norm"), h, eps, c.norm_bias)?) },
                qkv: linear(&l.pp("attn.Wqkv"), h, 3 * h, c.attention_bias)?,
                attn_out: linear(&l.pp("attn.Wo"), h, h, c.attention_bias)?,
                mlp_norm: layer_norm(&l.pp("mlp_norm"), h, eps, c.norm_bias)?,
                wi: linear(&l.pp("mlp.Wi"), h, 2 * c.intermediate_size, c.mlp_bias)?,
                wo: linear(&l.pp("mlp.Wo"), c.intermediate_size, h, c.mlp_bias)?,
                sliding,
            });
        }
        let d = h / c.num_attention_heads;
        Ok(ModernBertCandle {
            word: Embedding::new(vb.get((c.vocab_size, h), "embeddings.tok_embeddings.weight")?, h),
            emb_norm: layer_norm(&vb.pp("embeddings.norm"), h, eps, c.norm_bias)?,
            layers,
            final_norm: layer_norm(&vb.pp("final_norm"), h, eps, c.norm_bias)?,
            global_rope: rope_tables(s.global_theta, d, c.max_position_embeddings, device, dtype)?,
            local_rope: rope_tables(s.local_theta, d, c.max_position_embeddings, device, dtype)?,
            heads: c.num_attention_heads,
            half_window: c.local_attention / 2,
            act: s.act,
            max_len: c.max_position_embeddings,
            dtype,
            device: device.clone(),
        })
    }

    /// Last hidden states `(rows, len, hidden)` in float32 of right-padded `ids` `(rows, len)`; `mask` holds
    /// 1 for real tokens and 0 for padding.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        let (b, l) = ids.dims2()?;
        if l == 0 || l > self.max_len {
            return Err(EncoderError::Batch(format!("row length {l} outside 1..={}", self.max_len)));
        }
        let global = padding_bias(mask, self.dtype)?;
        let local = if self.layers.iter().any(|x| x.sliding) && l > self.half_window + 1 {
            Some(window_bias(mask, self.half_window, self.dtype)?)
        } else {
            None
        };
        let mut x = self.emb_norm.forward(&self.word.forward(ids)?)?;
        let h = x.dim(D::Minus1)?;
        let (heads, d) = (self.heads, h / self.heads);
        for layer in &self.layers {
            let (bias, (cos, sin)) = if layer.sliding { (local.as_ref().unwrap_or(&global), &self.local_rope) } else { (&global, &self.global_rope) };
            let normed = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let qkv = layer.qkv.forward(&normed)?; // (b, l, 3h)
            let split = |i: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(D::Minus1, i * h, h)?.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = candle_nn::rotary_emb::rope(&split(0)?, cos, sin)?;
            let k = candle_nn::rotary_emb::rope(&split(1)?, cos, sin)?;
            let v = split(2)?;
            let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
            x = (layer.attn_out.forward(&ctx)? + &x)?;
            let up = layer.wi.forward(&layer.mlp_norm.forward(&x)?)?;
            let half = up.dim(D::Minus1)? / 2;
            let (input, gate) = (up.narrow(D::Minus1, 0, half)?, up.narrow(D::Minus1, half, half)?);
            let input = self.act.tensor(&input)?;
            x = (layer.wo.forward(&(input * gate)?)? + &x)?;
        }
        Ok(self.final_norm.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl PaddedModel for ModernBertCandle {
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        ModernBertCandle::forward(self, ids, mask)
    }
}

/// The ModernBERT backend: [`ModernBertCandle`] plus pooling (on the host, in float32).
pub type ModernBertBackend = Padded<ModernBertCandle>;

impl ModernBertBackend {
    pub fn load(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
        Ok(Padded { model: ModernBertCandle::load(Path::new(&spec.path), device, dtype)?, spec: spec.clone() })
    }
}

/// A layer norm's scale and shift (zeros when the model has no norm biases).
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct CpuLayer {
    attn_norm: Option<Norm>,
    qkv: bert::Linear,
    attn_out: bert::Linear,
    mlp_norm: Norm,
    wi: bert::Linear,
    wo: bert::Linear,
    sliding: bool,
}

/// ModernBERT's forward pass on the CPU as `bert.rs` runs BERT: packed rows (no padding, no mask), attention
/// per row and head over that row's tokens (a sliding layer's softmax over the window only), single-threaded
/// kernels per group of rows ([`Packed`] splits a batch over threads); float32, or the linear layers in
/// bfloat16 on CPUs with AVX512_BF16.
pub struct ModernBertCpu {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    act: Activation,
    max_len: usize,
    vocab: usize,
    word: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<CpuLayer>,
    final_norm: Norm,
    /// cos and sin, `max_len x head_dim / 2`, of the global and the sliding layers.
    global_rope: (Vec<f32>, Vec<f32>),
    local_rope: (Vec<f32>, Vec<f32>),
    half_window: usize,
}

impl ModernBertCpu {
    /// Loads a sentence-transformers ModernBERT folder, the linear layers in `dtype` (float32 or bfloat16).
    pub fn load_with(folder: &Path, dtype: Dtype) -> Result<ModernBertCpu, EncoderError> {
        if !matches!(dtype, Dtype::F32 | Dtype::Bf16) {
            return Err(EncoderError::Setting(format!("--dtype {}: on cpu for modernbert models use float32 or bfloat16", dtype.name())));
        }
        dtype.cpu_has_instructions().map_err(EncoderError::Setting)?;
        let (c, s) = read_config(folder)?;
        let w = Weights::open(folder, "embeddings.tok_embeddings.weight", &["".to_string(), "model.".to_string()])?;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let norm = |name: &str| -> Result<Norm, EncoderError> {
            let gamma = w.vec(&format!("{name}.weight"), &[h])?;
            let beta = if c.norm_bias { w.vec(&format!("{name}.bias"), &[h])? } else { vec![0.0; h] };
            Ok(Norm { gamma, beta })
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (k, &sliding) in s.sliding.iter().enumerate() {
            let p = format!("layers.{k}");
            let mut layer = CpuLayer {
                attn_norm: if k == 0 { None } else { Some(norm(&format!("{p}.attn_norm"))?) },
                qkv: w.linear_with(&format!("{p}.attn.Wqkv"), h, 3 * h, c.attention_bias)?,
                attn_out: w.linear_with(&format!("{p}.attn.Wo"), h, h, c.attention_bias)?,
                mlp_norm: norm(&format!("{p}.mlp_norm"))?,
                wi: w.linear_with(&format!("{p}.mlp.Wi"), h, 2 * i, c.mlp_bias)?,
                wo: w.linear_with(&format!("{p}.mlp.Wo"), i, h, c.mlp_bias)?,
                sliding,
            };
            for linear in [&mut layer.qkv, &mut layer.attn_out, &mut layer.wi, &mut layer.wo] {
                linear.use_dtype(dtype, None);
            }
            layers.push(layer);
        }
        let d = h / c.num_attention_heads;
        Ok(ModernBertCpu {
            hidden: h,
            heads: c.num_attention_heads,
            intermediate: i,
            eps: c.norm_eps as f32,
            act: s.act,
            max_len: c.max_position_embeddings,
            vocab: c.vocab_size,
            word: w.vec("embeddings.tok_embeddings.weight", &[c.vocab_size, h])?,
            emb_norm: norm("embeddings.norm")?,
            layers,
            final_norm: norm("final_norm")?,
            global_rope: rope_angles(s.global_theta, d, c.max_position_embeddings),
            local_rope: rope_angles(s.local_theta, d, c.max_position_embeddings),
            half_window: c.local_attention / 2,
        })
    }

    /// Rotates each row's queries and keys in `qkv` (`tokens x 3 hidden`) by their positions in the row, as
    /// transformers' `apply_rotary_pos_emb`: the two halves of a head, `(x1 cos - x2 sin, x2 cos + x1 sin)`.
    fn rotate(&self, qkv: &mut [f32], lengths: &[u32], (cos, sin): &(Vec<f32>, Vec<f32>)) {
        let (h, d) = (self.hidden, self.hidden / self.heads);
        let half = d / 2;
        let mut at = 0;
        for &n in lengths {
            for t in 0..n as usize {
                let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                let token = &mut qkv[(at + t) * 3 * h..(at + t) * 3 * h + 2 * h];
                for head in token.chunks_exact_mut(d) {
                    rotate(head, c, s);
                }
            }
            at += n as usize;
        }
    }

    /// Scaled dot-product attention of each row and head over that row's own tokens; in a sliding layer a
    /// query's softmax runs over the keys at most `half_window` away and the others get weight 0.
    fn attention(&self, qkv: &[f32], lengths: &[u32], ctx: &mut [f32], scores: &mut [f32], sliding: bool) {
        let d = self.hidden / self.heads;
        let layout = kernels::QkvLayout { heads: self.heads, kv_heads: self.heads, head_dim: d };
        let window = sliding.then_some(self.half_window);
        kernels::packed_attention(qkv, layout, lengths, 1.0 / (d as f32).sqrt(), window, ctx, scores, |_, _, _| {});
    }
}

impl PackedModel for ModernBertCpu {
    fn hidden(&self) -> usize {
        self.hidden
    }

    fn forward_rows(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError> {
        let (h, m, inter) = (self.hidden, ids.len(), self.intermediate);
        check_packed(ids, lengths, self.max_len, self.vocab)?;
        let mut x = vec![0f32; m * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
            row.copy_from_slice(&self.word[id as usize * h..(id as usize + 1) * h]);
        }
        kernels::layer_norm(&mut x, &self.emb_norm.gamma, &self.emb_norm.beta, self.eps);
        let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
        let (mut normed, mut ctx, mut scores) = (vec![0f32; m * h], vec![0f32; m * h], vec![0f32; longest * longest]);
        let (mut qkv, mut y, mut up, mut gated) = (Vec::new(), Vec::new(), Vec::new(), vec![0f32; m * inter]);
        for layer in &self.layers {
            normed.copy_from_slice(&x);
            if let Some(n) = &layer.attn_norm {
                kernels::layer_norm(&mut normed, &n.gamma, &n.beta, self.eps);
            }
            layer.qkv.forward(&normed, &mut qkv, m);
            self.rotate(&mut qkv, lengths, if layer.sliding { &self.local_rope } else { &self.global_rope });
            self.attention(&qkv, lengths, &mut ctx, &mut scores, layer.sliding);
            layer.attn_out.forward(&ctx, &mut y, m);
            kernels::add_assign(&mut x, &y);
            normed.copy_from_slice(&x);
            kernels::layer_norm(&mut normed, &layer.mlp_norm.gamma, &layer.mlp_norm.beta, self.eps);
            // GeGLU: the first half of W_in's output activated, times the second half.
            layer.wi.forward(&normed, &mut up, m);
            self.act.gated(&up, &mut gated, inter);
            layer.wo.forward(&gated, &mut y, m);
            kernels::add_assign(&mut x, &y);
        }
        kernels::layer_norm(&mut x, &self.final_norm.gamma, &self.final_norm.beta, self.eps);
        Ok(x)
    }
}

/// The CPU ModernBERT backend: [`ModernBertCpu`] plus pooling, each batch split over threads.
pub type ModernBertCpuBackend = Packed<ModernBertCpu>;

impl ModernBertCpuBackend {
    pub fn load(spec: &ModelSpec, threads: usize, dtype: Dtype) -> Result<Self, EncoderError> {
        Packed::new(ModernBertCpu::load_with(Path::new(&spec.path), dtype)?, spec, threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 4,
                                       "num_attention_heads": 2, "max_position_embeddings": 64});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn both_config_layouts_settle_the_same() {
        // The Hub's layout (answerdotai/ModernBERT-base and the embedders built on it).
        let hub = config(serde_json::json!({"global_attn_every_n_layers": 3, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0}));
        // transformers 5's, as it saves the same model.
        let v5 = config(serde_json::json!({
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_theta": 160000.0, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}));
        let want = Settled { sliding: vec![false, true, true, false], global_theta: 160_000.0, local_theta: 10_000.0, act: Activation::GeluErf };
        assert_eq!(hub.settle().unwrap(), want);
        assert_eq!(v5.settle().unwrap(), want);
        // Nothing said: transformers' defaults.
        assert_eq!(config(serde_json::json!({})).settle().unwrap(), want);
        let other = config(serde_json::json!({"global_attn_every_n_layers": 2, "local_rope_theta": 500.0}));
        assert_eq!(other.settle().unwrap().sliding, vec![false, true, false, true]);
        assert_eq!(other.settle().unwrap().local_theta, 500.0);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let yarn = config(serde_json::json!({"rope_parameters": {"full_attention": {"rope_theta": 1e5, "rope_type": "yarn"}}}));
        assert_eq!(yarn.settle().unwrap_err(), "rope_parameters.full_attention.rope_type \"yarn\" is not supported (default)");
        let act = config(serde_json::json!({"hidden_activation": "swish"}));
        assert!(act.settle().unwrap_err().starts_with("hidden_activation \"swish\""));
        let types = config(serde_json::json!({"layer_types": ["full_attention"]}));
        assert_eq!(types.settle().unwrap_err(), "layer_types has 1 entries for 4 layers");
        let every = config(serde_json::json!({"global_attn_every_n_layers": 0}));
        assert!(every.settle().is_err());
    }
}
