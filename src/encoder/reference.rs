//! The reference BERT (`--encoder candle`): candle-transformers' `BertModel` on the CPU, which this crate's
//! own BERT encoders are checked against.

use candle_core::{Device, Tensor};

use crate::encoder::contract::EncoderError;
use crate::encoder::parts::load_parts;
use crate::encoder::pool::{Padded, PaddedModel};
use crate::model::ModelSpec;

/// candle-transformers' `BertModel` on the CPU.
pub struct ReferenceBert {
    model: candle_transformers::models::bert::BertModel,
    device: Device,
}

impl PaddedModel for ReferenceBert {
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError> {
        Ok(self.model.forward(ids, &ids.zeros_like()?, Some(mask))?)
    }
}

/// BERT-family encoder on candle-transformers' `BertModel` (CPU): the reference for `encoder::bert`.
pub type ReferenceBertBackend = Padded<ReferenceBert>;

impl ReferenceBertBackend {
    pub fn load(spec: &ModelSpec) -> Result<Self, EncoderError> {
        let (config, vb, device) = load_parts::<candle_transformers::models::bert::Config>(spec)?;
        let model = candle_transformers::models::bert::BertModel::load(vb, &config)?;
        Ok(Padded { model: ReferenceBert { model, device }, spec: spec.clone() })
    }
}
