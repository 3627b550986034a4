//! MPNet (`model_type` mpnet: all-mpnet-base-v2 and its family) on candle tensor ops, for the CPU and CUDA GPUs
//! in any float dtype.
//!
//! As BERT, but: absolute positions start after the padding index (`padding_idx + 1`, RoBERTa-style) and there
//! are no token types; every layer adds a relative position bias to its attention scores, one learned value per
//! head and bucket of the key-minus-query distance (32 buckets: exact up to 8 either way, logarithmic up to 128),
//! shared by all layers; Q, K and V are separate weights (`attention.attn.q/k/v`), fused here into one matmul.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::encoder::bert::{relative_buckets, Activation};
use crate::encoder::bert_candle::{linear, norm, padding_bias, position_embeddings, Layer};
use crate::encoder::contract::EncoderError;
use crate::encoder::parts::{config_error, read_config_json};
use crate::encoder::pool::{Padded, PaddedModel};
use crate::model::ModelSpec;

/// The parts of an MPNet config.json this forward pass uses.
#[derive(Debug, Clone, Deserialize)]
struct MpnetConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_pad")]
    pad_token_id: usize,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_eps() -> f64 {
    1e-5
}

fn default_buckets() -> usize {
    32
}

fn default_pad() -> usize {
    1
}

/// An MPNet encoder's weights on a candle device.
pub struct MpnetCandle {
    word: Embedding,
    /// `max_positions x hidden`.
    position: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// `buckets x heads`.
    relative: Tensor,
    buckets: usize,
    heads: usize,
    act: Activation,
    /// Rows longest with positions after the padding index.
    max_len: usize,
    /// The padding index, after which positions start (see `bert_candle::position_embeddings`).
    padding_idx: usize,
    dtype: DType,
    device: Device,
}

impl MpnetCandle {
    /// Loads a sentence-transformers MPNet folder onto `device`, weights converted to `dtype`.
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<MpnetCandle, EncoderError> {
        let bad = |message: String| config_error(folder, message);
        let c: MpnetConfig = read_config_json(folder)?;
        let act = match c.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(bad(format!("hidden_act \"{other}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"))),
        };
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(bad(format!("hidden_size {} is not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads)));
        }
        if c.relative_attention_num_buckets < 4 || c.pad_token_id + 2 > c.max_position_embeddings {
            return Err(bad(format!(
                "relative_attention_num_buckets {} (at least 4) or pad_token_id {} (below max_position_embeddings {} - 1) out of range",
                c.relative_attention_num_buckets, c.pad_token_id, c.max_position_embeddings
            )));
        }
        let weights = folder.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; we do not modify it while loading.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device)? };
        let vb = if root.contains_tensor("mpnet.embeddings.word_embeddings.weight") { root.pp("mpnet") } else { root };
        let h = c.hidden_size;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention.attn");
            let parts = ["q", "k", "v"];
            let w = Tensor::cat(&parts.iter().map(|p| a.pp(*p).get((h, h), "weight")).collect::<Result<Vec<_>, _>>()?, 0)?;
            let b = Tensor::cat(&parts.iter().map(|p| a.pp(*p).get(h, "bias")).collect::<Result<Vec<_>, _>>()?, 0)?;
            layers.push(Layer {
                qkv: Linear::new(w, Some(b)),
                attn_out: linear(&a.pp("o"), h, h)?,
                attn_norm: norm(&l.pp("attention.LayerNorm"), h, c.layer_norm_eps)?,
                up: linear(&l.pp("intermediate.dense"), h, c.intermediate_size)?,
                down: linear(&l.pp("output.dense"), c.intermediate_size, h)?,
                out_norm: norm(&l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        let e = vb.pp("embeddings");
        Ok(MpnetCandle {
            word: Embedding::new(e.get((c.vocab_size, h), "word_embeddings.weight")?, h),
            position: e.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            emb_norm: norm(&e.pp("LayerNorm"), h, c.layer_norm_eps)?,
            layers,
            relative: vb.get((c.relative_attention_num_buckets, c.num_attention_heads), "encoder.relative_attention_bias.weight")?,
            buckets: c.relative_attention_num_buckets,
            heads: c.num_attention_heads,
            act,
            max_len: c.max_position_embeddings - c.pad_token_id - 1,
            padding_idx: c.pad_token_id,
            dtype,
            device: device.clone(),
        })
    }

    /// The relative position bias `(1, heads, l, l)` of a sequence of `l` tokens.
    fn position_bias(&self, l: usize) -> Result<Tensor, EncoderError> {
        // The bucket of each distance once, then the (query, key) grid by lookup.
        let by_distance = relative_buckets(l, self.buckets);
        let buckets: Vec<u32> = (0..l).flat_map(|q| (0..l).map(|k| by_distance[k + l - 1 - q] as u32).collect::<Vec<_>>()).collect();
        let buckets = Tensor::from_vec(buckets, l * l, &self.device)?;
        // (l * l, heads) -> (heads, l, l)
        let bias = self.relative.index_select(&buckets, 0)?.t()?.reshape((1, self.heads, l, l))?;
        Ok(bias.contiguous()?)
    }

    /// Last hidden states `(rows, len, hidden)` in float32 of right-padded `ids` `(rows, len)`; `mask` holds
    /// 1 for real tokens and 0 for padding.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        let (_, l) = ids.dims2()?;
        if l > self.max_len {
            return Err(EncoderError::Batch(format!("row length {l} outside 1..={}", self.max_len)));
        }
        let x = self.word.forward(ids)?.broadcast_add(&position_embeddings(&self.position, ids, Some(self.padding_idx))?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let bias = padding_bias(mask, self.dtype)?.broadcast_add(&self.position_bias(l)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, self.heads, self.act)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }
}

impl PaddedModel for MpnetCandle {
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        MpnetCandle::forward(self, ids, mask)
    }
}

/// The MPNet backend: [`MpnetCandle`] plus pooling (on the host, in float32).
pub type MpnetBackend = Padded<MpnetCandle>;

impl MpnetBackend {
    pub fn load(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
        Ok(Padded { model: MpnetCandle::load(Path::new(&spec.path), device, dtype)?, spec: spec.clone() })
    }
}
