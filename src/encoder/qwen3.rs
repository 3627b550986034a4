//! Qwen3 embedders (Qwen3-Embedding) on candle-transformers' Qwen3, on the CPU or a CUDA GPU.

use candle_core::{DType, Device, Tensor};

use crate::encoder::contract::{Backend, EncoderError, TokenBatch};
use crate::encoder::parts::load_parts_on;
use crate::encoder::pool::pool;
use crate::model::ModelSpec;

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
    pub fn load_on(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Self, EncoderError> {
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

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        let dim = self.spec.dim;
        let mut out = Vec::with_capacity(batch.rows() * dim);
        let mut at = 0;
        for &n in &batch.lengths {
            let n = n as usize;
            if n == 0 || n > self.spec.max_seq_length {
                return Err(EncoderError::Batch(format!("row length {n} outside 1..={}", self.spec.max_seq_length)));
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
