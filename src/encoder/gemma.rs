//! Gemma3 as a bidirectional encoder (`model_type` gemma3_text with `use_bidirectional_attention`:
//! embeddinggemma) on candle tensor ops, for the CPU and CUDA GPUs in any float dtype.
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

use crate::encoder::bert::Activation;
use crate::encoder::bert_candle::{padding_bias, window_bias};
use crate::encoder::contract::EncoderError;
use crate::encoder::pool::{Padded, PaddedModel};
use crate::encoder::rope::{rope_tables, theta, RopeParameters};
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
            Some(types) => {
                if types.len() != self.num_hidden_layers {
                    return Err(format!("layer_types has {} entries for {} layers", types.len(), self.num_hidden_layers));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(false),
                        "sliding_attention" => Ok(true),
                        other => Err(format!("layer_types: \"{other}\" is neither full_attention nor sliding_attention")),
                    })
                    .collect::<Result<Vec<bool>, String>>()?
            }
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

impl GemmaCandle {
    /// Loads a sentence-transformers gemma3_text folder onto `device`, weights converted to `dtype` (the
    /// norms stay float32).
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<GemmaCandle, EncoderError> {
        let file = folder.join("config.json");
        let bad = |message: String| EncoderError::BadWeights { file: file.display().to_string(), message };
        let c: Config = serde_json::from_slice(&std::fs::read(&file).map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        let s = c.settle().map_err(bad)?;
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
            let gate = match s.act {
                Activation::GeluTanh => gate.gelu()?,
                Activation::GeluErf => gate.gelu_erf()?,
                Activation::Relu => gate.relu()?,
            };
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
