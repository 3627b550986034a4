//! The reference BERT (`--encoder candle`): candle-transformers' `BertModel` on the CPU, which this crate's
//! own BERT encoders are checked against.

use candle_core::Device;

use crate::encoder::contract::{Backend, EncoderError, TokenBatch};
use crate::encoder::parts::load_parts;
use crate::encoder::pool::embed_padded;
use crate::model::ModelSpec;

/// BERT-family encoder on candle-transformers' `BertModel` (CPU): the reference for `crate::bert`.
pub struct ReferenceBertBackend {
    model: candle_transformers::models::bert::BertModel,
    spec: ModelSpec,
    device: Device,
}

impl ReferenceBertBackend {
    pub fn load(spec: &ModelSpec) -> Result<Self, EncoderError> {
        let (config, vb, device) = load_parts::<candle_transformers::models::bert::Config>(spec)?;
        let model = candle_transformers::models::bert::BertModel::load(vb, &config)?;
        Ok(ReferenceBertBackend { model, spec: spec.clone(), device })
    }
}

impl Backend for ReferenceBertBackend {
    fn dim(&self) -> usize {
        self.spec.dim
    }

    fn pads(&self) -> bool {
        true
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        embed_padded(&self.spec, &self.device, batch, |ids, mask| Ok(self.model.forward(ids, &ids.zeros_like()?, Some(mask))?))
    }
}
