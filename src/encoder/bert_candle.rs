//! BERT on candle tensor ops for any candle device and dtype: the encoder on CUDA GPUs (float32, float16,
//! bfloat16). It also runs on the CPU, which is how the tests check its numerics without a GPU.
//!
//! Unlike candle-transformers' `BertModel`, the padding mask is an additive `-65504` (the most negative
//! float16), not `f32::MIN`: in float16 that overflows to -inf and `0 * -inf` makes every score NaN. Q, K and
//! V are one fused matmul. Batches are right-padded to their longest row (bucketing keeps that small).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use crate::encoder::bert::{read_config, Activation};
use crate::encoder::contract::EncoderError;
use crate::encoder::parts::config_error;
use crate::encoder::pool::{Padded, PaddedModel};
use crate::model::ModelSpec;

/// A post-norm transformer layer of the BERT family (BERT, MPNet): fused QKV attention, then a GELU/ReLU MLP,
/// each with a residual and a layer norm.
pub(crate) struct Layer {
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub up: Linear,
    pub down: Linear,
    pub out_norm: LayerNorm,
}

impl Layer {
    /// `x` `(b, l, h)` through the layer; `bias` is added to the attention scores `(b, heads, l, l)` (padding
    /// mask, relative position bias) and broadcasts to them.
    pub fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize, act: Activation) -> Result<Tensor, EncoderError> {
        let (b, l, h) = x.dims3()?;
        let d = h / heads;
        let qkv = self.qkv.forward(x)?; // (b, l, 3h)
        let split =
            |i: usize| -> candle_core::Result<Tensor> { qkv.narrow(D::Minus1, i * h, h)?.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous() };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?); // (b, heads, l, d)
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
        let a = self.attn_norm.forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let up = self.up.forward(&a)?;
        let up = act.tensor(&up)?;
        Ok(self.out_norm.forward(&(self.down.forward(&up)? + &a)?)?)
    }
}

/// Position embeddings of right-padded `ids` `(b, l)`: BERT's `0..l` (`(l, h)`, broadcast over rows), or with
/// `padding_idx` RoBERTa-style positions `(b, l, h)` as transformers' `create_position_ids_from_input_ids`: a
/// token other than the padding id is at `padding_idx + (such tokens up to it)`, the padding id at
/// `padding_idx`. Computed on the host (a few bytes per token).
pub(crate) fn position_embeddings(position: &Tensor, ids: &Tensor, padding_idx: Option<usize>) -> Result<Tensor, EncoderError> {
    let (b, l) = ids.dims2()?;
    let Some(pad) = padding_idx else { return Ok(position.narrow(0, 0, l)?) };
    let mut at = Vec::with_capacity(b * l);
    for row in ids.to_vec2::<u32>()? {
        let mut counted = 0;
        for id in row {
            at.push(if id as usize == pad {
                pad as u32
            } else {
                counted += 1;
                (pad + counted) as u32
            });
        }
    }
    let at = Tensor::from_vec(at, b * l, position.device())?;
    Ok(position.index_select(&at, 0)?.reshape((b, l, ()))?)
}

/// 0 where attended, -65504 (finite in every float dtype) on padding: `(mask - 1) * 65504`, `(b, 1, 1, l)`.
pub(crate) fn padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor, EncoderError> {
    let (b, l) = mask.dims2()?;
    Ok(mask.to_dtype(dtype)?.affine(65504.0, -65504.0)?.reshape((b, 1, 1, l))?)
}

/// The additive attention bias of a sliding-window layer, `(b, 1, l, l)`: [`padding_bias`] plus -65504 for keys
/// more than `half_window` from the query, clamped at -65504 (a sum of two would be -inf in float16, and a
/// padding query whose window holds only padding would then be NaN and spread through the values).
pub(crate) fn window_bias(mask: &Tensor, half_window: usize, dtype: DType) -> Result<Tensor, EncoderError> {
    let (_, l) = mask.dims2()?;
    let far: Vec<f32> = (0..l).flat_map(|q| (0..l).map(move |k| if q.abs_diff(k) > half_window { -65504.0 } else { 0.0 })).collect();
    let far = Tensor::from_vec(far, (1, 1, l, l), mask.device())?;
    let both = padding_bias(mask, DType::F32)?.broadcast_add(&far)?.clamp(-65504f32, 0f32)?;
    Ok(both.to_dtype(dtype)?)
}

/// A BERT encoder's weights on a candle device.
pub struct BertCandle {
    word: Embedding,
    /// `max_positions x hidden`.
    position: Tensor,
    /// Token type 0's embedding, `hidden`.
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    act: Activation,
    max_positions: usize,
    /// RoBERTa-style positions (XLM-RoBERTa): the padding index (see [`position_embeddings`]).
    padding_idx: Option<usize>,
    dtype: DType,
    device: Device,
}

pub(crate) fn norm(vb: &VarBuilder, h: usize, eps: f64) -> Result<LayerNorm, EncoderError> {
    let (w, b) = if vb.contains_tensor("weight") { ("weight", "bias") } else { ("gamma", "beta") };
    Ok(LayerNorm::new(vb.get(h, w)?, vb.get(h, b)?, eps))
}

pub(crate) fn linear(vb: &VarBuilder, inputs: usize, outputs: usize) -> Result<Linear, EncoderError> {
    Ok(Linear::new(vb.get((outputs, inputs), "weight")?, Some(vb.get(outputs, "bias")?)))
}

impl BertCandle {
    /// Loads a sentence-transformers BERT folder onto `device`, weights converted to `dtype`.
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<BertCandle, EncoderError> {
        let (c, act) = read_config(folder)?;
        let weights = folder.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; we do not modify it while loading.
        let root = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device)? };
        let vb = ["bert", "roberta", c.model_type.as_deref().unwrap_or("bert")]
            .iter()
            .map(|p| root.pp(*p))
            .find(|vb| vb.contains_tensor("embeddings.word_embeddings.weight"))
            .unwrap_or(root);
        let h = c.hidden_size;
        let padding_idx = matches!(c.model_type.as_deref(), Some("xlm-roberta" | "roberta")).then(|| c.pad_token_id.unwrap_or(1));
        if padding_idx.is_some_and(|p| p + 1 >= c.max_position_embeddings) {
            return Err(config_error(
                folder,
                format!("pad_token_id {:?} must be below max_position_embeddings {} - 1", c.pad_token_id, c.max_position_embeddings),
            ));
        }
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention.self");
            let parts = ["query", "key", "value"];
            let w = Tensor::cat(&parts.iter().map(|p| a.pp(*p).get((h, h), "weight")).collect::<Result<Vec<_>, _>>()?, 0)?;
            let b = Tensor::cat(&parts.iter().map(|p| a.pp(*p).get(h, "bias")).collect::<Result<Vec<_>, _>>()?, 0)?;
            layers.push(Layer {
                qkv: Linear::new(w, Some(b)),
                attn_out: linear(&l.pp("attention.output.dense"), h, h)?,
                attn_norm: norm(&l.pp("attention.output.LayerNorm"), h, c.layer_norm_eps)?,
                up: linear(&l.pp("intermediate.dense"), h, c.intermediate_size)?,
                down: linear(&l.pp("output.dense"), c.intermediate_size, h)?,
                out_norm: norm(&l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        let e = vb.pp("embeddings");
        let types = e.get_unchecked("token_type_embeddings.weight")?;
        Ok(BertCandle {
            word: Embedding::new(e.get((c.vocab_size, h), "word_embeddings.weight")?, h),
            position: e.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: types.narrow(0, 0, 1)?.squeeze(0)?,
            emb_norm: norm(&e.pp("LayerNorm"), h, c.layer_norm_eps)?,
            layers,
            heads: c.num_attention_heads,
            act,
            max_positions: c.max_position_embeddings - padding_idx.map_or(0, |p| p + 1),
            padding_idx,
            dtype,
            device: device.clone(),
        })
    }

    /// Last hidden states `(rows, len, hidden)` in float32 of right-padded `ids` `(rows, len)`; `mask` holds
    /// 1 for real tokens and 0 for padding.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        let (_, l) = ids.dims2()?;
        if l > self.max_positions {
            return Err(EncoderError::Batch(format!("row length {l} outside 1..={}", self.max_positions)));
        }
        let x =
            self.word.forward(ids)?.broadcast_add(&position_embeddings(&self.position, ids, self.padding_idx)?)?.broadcast_add(&self.token_type)?;
        let mut x = self.emb_norm.forward(&x)?;
        let additive = padding_bias(mask, self.dtype)?;
        for layer in &self.layers {
            x = layer.forward(&x, &additive, self.heads, self.act)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }
}

impl PaddedModel for BertCandle {
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        BertCandle::forward(self, ids, mask)
    }
}

/// The GPU BERT backend: [`BertCandle`] plus pooling (on the host, in float32).
pub type BertCandleBackend = Padded<BertCandle>;

impl BertCandleBackend {
    pub fn load(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
        Ok(Padded { model: BertCandle::load(Path::new(&spec.path), device, dtype)?, spec: spec.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_bias_is_finite_and_masks_far_keys_and_padding() {
        // One row: three tokens and one padding; keys at most one position away.
        let mask = Tensor::new(&[[1u32, 1, 1, 0]], &Device::Cpu).unwrap();
        let bias = window_bias(&mask, 1, DType::F16).unwrap().to_dtype(DType::F32).unwrap().squeeze(0).unwrap().squeeze(0).unwrap();
        let x = -65504.0;
        assert_eq!(bias.to_vec2::<f32>().unwrap(), vec![vec![0.0, 0.0, x, x], vec![0.0, 0.0, 0.0, x], vec![x, 0.0, 0.0, x], vec![x, x, 0.0, x]]);
    }
}
