//! Gemma3 as a bidirectional encoder (`model_type` gemma3_text with `use_bidirectional_attention`:
//! embeddinggemma): a packed CPU forward pass as `bert.rs`'s ([`GemmaCpu`]), and one on candle tensor ops for
//! CUDA GPUs in any float dtype and the CPU reference, `--encoder candle` ([`GemmaCandle`]).
//!
//! As transformers' Gemma3TextModel: token embeddings scaled by sqrt(hidden); each layer RMSNorm -> attention
//! -> RMSNorm -> residual, RMSNorm -> MLP `down(gelu_tanh(gate x) * up x)` -> RMSNorm -> residual; Gemma's
//! RMSNorms scale by `1 + weight` and run in float32; queries and keys get their own RMSNorm over the head
//! before rotary positions; key/value heads are shared by groups of query heads; scores are scaled by
//! `query_pre_attn_scalar^-1/2`. Layers are global or sliding-window, each kind with its RoPE theta; with
//! bidirectional attention a token sees keys at most `sliding_window / 2` away (transformers halves the
//! configured window for it). A final RMSNorm follows. Pooling, the Dense modules and Normalize come after.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::encoder::bert::{self, Activation, Weights};
use crate::encoder::bert_candle::{padding_bias, window_bias};
use crate::encoder::contract::{Dtype, EncoderError};
use crate::encoder::kernels;
use crate::encoder::parts::{config_error, read_config_json};
use crate::encoder::pool::{check_packed, Packed, PackedModel, Padded, PaddedModel};
use crate::encoder::rope::{rope_angles, rope_tables, rotate, sliding_layers, theta, RopeParameters};
use crate::model::ModelSpec;

/// The parts of a gemma3_text config.json this forward pass uses, in the Hub's layout or transformers 5's.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_act")]
    hidden_activation: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    rope_parameters: Option<RopeParameters>,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    attention_bias: bool,
    attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    use_bidirectional_attention: bool,
}

fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}

fn default_eps() -> f64 {
    1e-6
}

/// What a config.json settles.
#[derive(Debug, Clone, PartialEq)]
struct Settled {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    sliding: Vec<bool>,
    half_window: usize,
    global_theta: f64,
    local_theta: f64,
    act: Activation,
}

impl Config {
    fn settle(&self) -> Result<Settled, String> {
        if !self.use_bidirectional_attention {
            return Err("use_bidirectional_attention is not true: gemma3_text models run here as bidirectional encoders (embeddinggemma), not causal decoders".into());
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported".into());
        }
        let act = match self.hidden_activation.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            other => return Err(format!("hidden_activation \"{other}\" is not supported (gelu_pytorch_tanh, gelu, relu)")),
        };
        let heads = self.num_attention_heads;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even for rotary positions"));
        }
        let sliding = match &self.layer_types {
            Some(types) => sliding_layers(types, self.num_hidden_layers)?,
            // transformers: every `sliding_window_pattern`-th layer (counting from 1) is global.
            None => {
                let n = self.sliding_window_pattern.unwrap_or(6).max(1);
                (0..self.num_hidden_layers).map(|i| !(i + 1).is_multiple_of(n)).collect()
            }
        };
        let window = self.sliding_window.unwrap_or(4096);
        if sliding.iter().any(|&s| s) && window < 2 {
            return Err(format!("sliding_window {window} must be at least 2"));
        }
        let rope = self.rope_parameters.as_ref();
        Ok(Settled {
            heads,
            kv_heads,
            head_dim,
            scale: self.query_pre_attn_scalar.unwrap_or(head_dim as f64).powf(-0.5),
            sliding,
            // transformers' bidirectional window: |q - k| < window / 2 + 1.
            half_window: window / 2,
            global_theta: theta(rope.and_then(|r| r.full_attention.as_ref()), self.rope_theta, 1_000_000.0, "full_attention")?,
            local_theta: theta(rope.and_then(|r| r.sliding_attention.as_ref()), self.rope_local_base_freq, 10_000.0, "sliding_attention")?,
            act,
        })
    }
}

/// Gemma's RMSNorm: `x / rms(x) * (1 + weight)` in float32, back in the input's dtype.
struct RmsNorm {
    /// `1 + weight`, float32.
    alpha: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(vb: &VarBuilder, size: usize, eps: f64) -> Result<RmsNorm, EncoderError> {
        Ok(RmsNorm { alpha: (vb.get(size, "weight")?.to_dtype(DType::F32)? + 1.0)?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, EncoderError> {
        let dtype = x.dtype();
        Ok(candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.alpha, self.eps)?.to_dtype(dtype)?)
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ff_norm: RmsNorm,
    sliding: bool,
}

/// A Gemma3 encoder's weights on a candle device.
pub struct GemmaCandle {
    word: Embedding,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: RmsNorm,
    global_rope: (Tensor, Tensor),
    local_rope: (Tensor, Tensor),
    s: Settled,
    softcap: Option<f64>,
    max_len: usize,
    dtype: DType,
    device: Device,
}

fn linear(vb: &VarBuilder, inputs: usize, outputs: usize, bias: bool) -> Result<Linear, EncoderError> {
    let b = if bias { Some(vb.get(outputs, "bias")?) } else { None };
    Ok(Linear::new(vb.get((outputs, inputs), "weight")?, b))
}

/// A folder's config.json, read and settled.
fn read_config(folder: &Path) -> Result<(Config, Settled), EncoderError> {
    let c: Config = read_config_json(folder)?;
    let s = c.settle().map_err(|m| config_error(folder, m))?;
    Ok((c, s))
}

impl GemmaCandle {
    /// Loads a sentence-transformers gemma3_text folder onto `device`, weights converted to `dtype` (the
    /// norms stay float32).
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<GemmaCandle, EncoderError> {
        let (c, s) = read_config(folder)?;
        let weights = folder.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; we do not modify it while loading.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device)? };
        // Gemma3TextModel saves `embed_tokens.*`; a causal-LM checkpoint `model.embed_tokens.*`.
        let vb = if root.contains_tensor("model.embed_tokens.weight") { root.pp("model") } else { root };
        let (h, eps, hd) = (c.hidden_size, c.rms_norm_eps, s.head_dim);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (i, &sliding) in s.sliding.iter().enumerate() {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                input_norm: RmsNorm::load(&l.pp("input_layernorm"), h, eps)?,
                q: linear(&a.pp("q_proj"), h, s.heads * hd, c.attention_bias)?,
                k: linear(&a.pp("k_proj"), h, s.kv_heads * hd, c.attention_bias)?,
                v: linear(&a.pp("v_proj"), h, s.kv_heads * hd, c.attention_bias)?,
                o: linear(&a.pp("o_proj"), s.heads * hd, h, c.attention_bias)?,
                q_norm: RmsNorm::load(&a.pp("q_norm"), hd, eps)?,
                k_norm: RmsNorm::load(&a.pp("k_norm"), hd, eps)?,
                post_attn_norm: RmsNorm::load(&l.pp("post_attention_layernorm"), h, eps)?,
                pre_ff_norm: RmsNorm::load(&l.pp("pre_feedforward_layernorm"), h, eps)?,
                gate: linear(&l.pp("mlp.gate_proj"), h, c.intermediate_size, false)?,
                up: linear(&l.pp("mlp.up_proj"), h, c.intermediate_size, false)?,
                down: linear(&l.pp("mlp.down_proj"), c.intermediate_size, h, false)?,
                post_ff_norm: RmsNorm::load(&l.pp("post_feedforward_layernorm"), h, eps)?,
                sliding,
            });
        }
        Ok(GemmaCandle {
            word: Embedding::new(vb.get((c.vocab_size, h), "embed_tokens.weight")?, h),
            embed_scale: (h as f64).sqrt(),
            layers,
            norm: RmsNorm::load(&vb.pp("norm"), h, eps)?,
            global_rope: rope_tables(s.global_theta, hd, c.max_position_embeddings, device, dtype)?,
            local_rope: rope_tables(s.local_theta, hd, c.max_position_embeddings, device, dtype)?,
            s,
            softcap: c.attn_logit_softcapping,
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
        let s = &self.s;
        let (heads, kv, hd) = (s.heads, s.kv_heads, s.head_dim);
        let global = padding_bias(mask, self.dtype)?;
        let local = if s.sliding.iter().any(|&x| x) && l > s.half_window + 1 { Some(window_bias(mask, s.half_window, self.dtype)?) } else { None };
        let mut x = (self.word.forward(ids)? * self.embed_scale)?;
        for layer in &self.layers {
            let (bias, (cos, sin)) = if layer.sliding { (local.as_ref().unwrap_or(&global), &self.local_rope) } else { (&global, &self.global_rope) };
            let h = layer.input_norm.forward(&x)?;
            let heads_of = |t: Tensor, n: usize| -> candle_core::Result<Tensor> { t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous() };
            let q = layer.q_norm.forward(&heads_of(layer.q.forward(&h)?, heads)?)?;
            let k = layer.k_norm.forward(&heads_of(layer.k.forward(&h)?, kv)?)?;
            let v = heads_of(layer.v.forward(&h)?, kv)?;
            let q = candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?;
            let k = candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?;
            // Each key/value head serves `heads / kv` query heads in a row.
            let (k, v) = if kv == heads {
                (k, v)
            } else {
                let repeat =
                    |t: Tensor| -> candle_core::Result<Tensor> { t.unsqueeze(2)?.expand((b, kv, heads / kv, l, hd))?.reshape((b, heads, l, hd)) };
                (repeat(k)?, repeat(v)?)
            };
            let mut scores = (q.matmul(&k.t()?)? * s.scale)?;
            if let Some(cap) = self.softcap {
                scores = ((scores / cap)?.tanh()? * cap)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(bias)?)?;
            let ctx = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, l, heads * hd))?;
            x = (layer.post_attn_norm.forward(&layer.o.forward(&ctx)?)? + &x)?;
            let h = layer.pre_ff_norm.forward(&x)?;
            let gate = layer.gate.forward(&h)?;
            let gate = s.act.tensor(&gate)?;
            let mlp = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            x = (layer.post_ff_norm.forward(&mlp)? + &x)?;
        }
        Ok(self.norm.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl PaddedModel for GemmaCandle {
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        GemmaCandle::forward(self, ids, mask)
    }
}

/// The Gemma3 encoder backend: [`GemmaCandle`] plus pooling (on the host, in float32).
pub type GemmaBackend = Padded<GemmaCandle>;

impl GemmaBackend {
    pub fn load(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
        Ok(Padded { model: GemmaCandle::load(Path::new(&spec.path), device, dtype)?, spec: spec.clone() })
    }
}

/// Gemma's RMSNorm of each row of `x` (rows of `gamma.len()`), in place; `gamma` holds `1 + weight`.
fn rms_norm_rows(x: &mut [f32], gamma: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(gamma.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / gamma.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(gamma) {
            *v = *v * inv * g;
        }
    }
}

struct CpuLayer {
    input_norm: Vec<f32>,
    /// Q, K and V side by side: `hidden x (heads + 2 kv_heads) head_dim`.
    qkv: bert::Linear,
    o: bert::Linear,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    post_attn_norm: Vec<f32>,
    pre_ff_norm: Vec<f32>,
    /// The gate and the up projection side by side: `hidden x 2 intermediate`.
    gate_up: bert::Linear,
    down: bert::Linear,
    post_ff_norm: Vec<f32>,
    sliding: bool,
}

/// Gemma3's encoder forward pass on the CPU as `bert.rs` runs BERT: packed rows (no padding, no mask),
/// attention per row and head over that row's tokens (a sliding layer's softmax over the window only),
/// single-threaded kernels per group of rows ([`Packed`] splits a batch over threads); float32, or the
/// linear layers in bfloat16 on CPUs with AVX512_BF16.
pub struct GemmaCpu {
    hidden: usize,
    intermediate: usize,
    eps: f32,
    vocab: usize,
    word: Vec<f32>,
    embed_scale: f32,
    layers: Vec<CpuLayer>,
    norm: Vec<f32>,
    global_rope: (Vec<f32>, Vec<f32>),
    local_rope: (Vec<f32>, Vec<f32>),
    s: Settled,
    softcap: Option<f32>,
    max_len: usize,
}

impl GemmaCpu {
    /// Loads a sentence-transformers gemma3_text folder, the linear layers in `dtype` (float32 or bfloat16).
    pub fn load_with(folder: &Path, dtype: Dtype) -> Result<GemmaCpu, EncoderError> {
        if !matches!(dtype, Dtype::F32 | Dtype::Bf16) {
            return Err(EncoderError::Setting(format!("--dtype {}: on cpu for gemma3_text models use float32 or bfloat16", dtype.name())));
        }
        dtype.cpu_has_instructions().map_err(EncoderError::Setting)?;
        let (c, s) = read_config(folder)?;
        let w = Weights::open(folder, "embed_tokens.weight", &["".to_string(), "model.".to_string()])?;
        let (h, i, hd) = (c.hidden_size, c.intermediate_size, s.head_dim);
        let norm =
            |name: String, size: usize| -> Result<Vec<f32>, EncoderError> { Ok(w.vec(&name, &[size])?.into_iter().map(|v| 1.0 + v).collect()) };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for (k, &sliding) in s.sliding.iter().enumerate() {
            let p = format!("layers.{k}");
            let attn = |x: &str| format!("{p}.self_attn.{x}");
            let mut layer = CpuLayer {
                input_norm: norm(format!("{p}.input_layernorm.weight"), h)?,
                qkv: w.stacked(
                    &[attn("q_proj"), attn("k_proj"), attn("v_proj")],
                    h,
                    &[s.heads * hd, s.kv_heads * hd, s.kv_heads * hd],
                    c.attention_bias,
                )?,
                o: w.linear_with(&attn("o_proj"), s.heads * hd, h, c.attention_bias)?,
                q_norm: norm(attn("q_norm.weight"), hd)?,
                k_norm: norm(attn("k_norm.weight"), hd)?,
                post_attn_norm: norm(format!("{p}.post_attention_layernorm.weight"), h)?,
                pre_ff_norm: norm(format!("{p}.pre_feedforward_layernorm.weight"), h)?,
                gate_up: w.stacked(&[format!("{p}.mlp.gate_proj"), format!("{p}.mlp.up_proj")], h, &[i, i], false)?,
                down: w.linear_with(&format!("{p}.mlp.down_proj"), i, h, false)?,
                post_ff_norm: norm(format!("{p}.post_feedforward_layernorm.weight"), h)?,
                sliding,
            };
            for linear in [&mut layer.qkv, &mut layer.o, &mut layer.gate_up, &mut layer.down] {
                linear.use_dtype(dtype, None);
            }
            layers.push(layer);
        }
        Ok(GemmaCpu {
            hidden: h,
            intermediate: i,
            eps: c.rms_norm_eps as f32,
            vocab: c.vocab_size,
            word: w.vec("embed_tokens.weight", &[c.vocab_size, h])?,
            embed_scale: (h as f64).sqrt() as f32,
            layers,
            norm: norm("norm.weight".into(), h)?,
            global_rope: rope_angles(s.global_theta, hd, c.max_position_embeddings),
            local_rope: rope_angles(s.local_theta, hd, c.max_position_embeddings),
            s,
            softcap: c.attn_logit_softcapping.map(|v| v as f32),
            max_len: c.max_position_embeddings,
        })
    }

    /// Each row's queries and keys in `qkv`: RMSNorm per head, then rotated by their positions in the row.
    fn norm_and_rotate(&self, qkv: &mut [f32], lengths: &[u32], layer: &CpuLayer, (cos, sin): &(Vec<f32>, Vec<f32>)) {
        let (hd, heads, kv) = (self.s.head_dim, self.s.heads, self.s.kv_heads);
        let (half, width) = (hd / 2, (heads + 2 * kv) * hd);
        let mut at = 0;
        for &n in lengths {
            for t in 0..n as usize {
                let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                let token = &mut qkv[(at + t) * width..(at + t) * width + (heads + kv) * hd];
                for (j, head) in token.chunks_exact_mut(hd).enumerate() {
                    rms_norm_rows(head, if j < heads { &layer.q_norm } else { &layer.k_norm }, self.eps);
                    rotate(head, c, s);
                }
            }
            at += n as usize;
        }
    }

    /// Attention of each row and query head over that row's tokens, its key/value head shared by a group of
    /// query heads; in a sliding layer a query's softmax runs over the keys at most `half_window` away.
    fn attention(&self, qkv: &[f32], lengths: &[u32], ctx: &mut [f32], scores: &mut [f32], sliding: bool) {
        let layout = kernels::QkvLayout { heads: self.s.heads, kv_heads: self.s.kv_heads, head_dim: self.s.head_dim };
        let window = sliding.then_some(self.s.half_window);
        kernels::packed_attention(qkv, layout, lengths, self.s.scale as f32, window, ctx, scores, |_, s, _| {
            if let Some(cap) = self.softcap {
                s.iter_mut().for_each(|x| *x = (*x / cap).tanh() * cap);
            }
        });
    }
}

impl PackedModel for GemmaCpu {
    fn hidden(&self) -> usize {
        self.hidden
    }

    fn forward_rows(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError> {
        let (h, m, inter, hd) = (self.hidden, ids.len(), self.intermediate, self.s.head_dim);
        check_packed(ids, lengths, self.max_len, self.vocab)?;
        let mut x = vec![0f32; m * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
            for (o, w) in row.iter_mut().zip(&self.word[id as usize * h..(id as usize + 1) * h]) {
                *o = w * self.embed_scale;
            }
        }
        let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
        let (mut normed, mut ctx, mut scores) = (vec![0f32; m * h], vec![0f32; m * self.s.heads * hd], vec![0f32; longest * longest]);
        let (mut qkv, mut y, mut up, mut gated) = (Vec::new(), Vec::new(), Vec::new(), vec![0f32; m * inter]);
        for layer in &self.layers {
            normed.copy_from_slice(&x);
            rms_norm_rows(&mut normed, &layer.input_norm, self.eps);
            layer.qkv.forward(&normed, &mut qkv, m);
            self.norm_and_rotate(&mut qkv, lengths, layer, if layer.sliding { &self.local_rope } else { &self.global_rope });
            self.attention(&qkv, lengths, &mut ctx, &mut scores, layer.sliding);
            layer.o.forward(&ctx, &mut y, m);
            rms_norm_rows(&mut y, &layer.post_attn_norm, self.eps);
            kernels::add_assign(&mut x, &y);
            normed.copy_from_slice(&x);
            rms_norm_rows(&mut normed, &layer.pre_ff_norm, self.eps);
            layer.gate_up.forward(&normed, &mut up, m);
            self.s.act.gated(&up, &mut gated, inter);
            layer.down.forward(&gated, &mut y, m);
            rms_norm_rows(&mut y, &layer.post_ff_norm, self.eps);
            kernels::add_assign(&mut x, &y);
        }
        rms_norm_rows(&mut x, &self.norm, self.eps);
        Ok(x)
    }
}

/// The CPU Gemma3 encoder backend: [`GemmaCpu`] plus pooling, each batch split over threads.
pub type GemmaCpuBackend = Packed<GemmaCpu>;

impl GemmaCpuBackend {
    pub fn load(spec: &ModelSpec, threads: usize, dtype: Dtype) -> Result<Self, EncoderError> {
        Packed::new(GemmaCpu::load_with(Path::new(&spec.path), dtype)?, spec, threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 6,
                                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "max_position_embeddings": 64,
                                       "use_bidirectional_attention": true, "sliding_window": 512});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn both_config_layouts_settle_the_same() {
        // embeddinggemma-300m's Hub layout (transformers 4.56).
        let hub = config(serde_json::json!({"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
                                            "query_pre_attn_scalar": 256}));
        let types = ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"];
        let v5 = config(serde_json::json!({"layer_types": types, "query_pre_attn_scalar": 256,
            "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}));
        let want = Settled {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            scale: 1.0 / 16.0,
            sliding: vec![true, true, true, true, true, false],
            half_window: 256,
            global_theta: 1e6,
            local_theta: 1e4,
            act: Activation::GeluTanh,
        };
        assert_eq!(hub.settle().unwrap(), want);
        assert_eq!(v5.settle().unwrap(), want);
        // No query_pre_attn_scalar: the head size scales.
        assert_eq!(config(serde_json::json!({})).settle().unwrap().scale, 0.5);
    }

    #[test]
    fn what_is_not_an_encoder_or_not_supported_is_named() {
        let causal = config(serde_json::json!({"use_bidirectional_attention": false}));
        assert!(causal.settle().unwrap_err().starts_with("use_bidirectional_attention is not true"));
        let scaled = config(serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        assert_eq!(scaled.settle().unwrap_err(), "rope_scaling is not supported");
        let gqa = config(serde_json::json!({"num_key_value_heads": 3}));
        assert!(gqa.settle().unwrap_err().contains("num_key_value_heads 3"));
        let act = config(serde_json::json!({"hidden_activation": "swish"}));
        assert!(act.settle().unwrap_err().starts_with("hidden_activation \"swish\""));
    }
}
