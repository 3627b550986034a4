//! What candle-transformers models load from a model folder: config.json as their config type, and the
//! weights memory-mapped from model.safetensors.

use std::path::Path;

use candle_core::{DType, Device};

use crate::encoder::contract::EncoderError;
use crate::model::{read_json, ModelError, ModelSpec};

/// A model folder's config.json as `C` for this crate's own forward passes: an unreadable file, or one that
/// is not a `C`, is a [`EncoderError::BadWeights`] naming it (as are later complaints, through [`config_error`]).
pub(crate) fn read_config_json<C: serde::de::DeserializeOwned>(folder: &Path) -> Result<C, EncoderError> {
    let bytes = std::fs::read(folder.join("config.json")).map_err(|e| config_error(folder, e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| config_error(folder, e.to_string()))
}

/// What is wrong with a model folder's config.json, naming the file.
pub(crate) fn config_error(folder: &Path, message: String) -> EncoderError {
    EncoderError::BadWeights { file: folder.join("config.json").display().to_string(), message }
}

/// A model folder's config.json as `C`, and its float32 weights (memory-mapped) on the CPU.
pub(crate) fn load_parts<C: serde::de::DeserializeOwned>(spec: &ModelSpec) -> Result<(C, candle_nn::VarBuilder<'static>, Device), EncoderError> {
    load_parts_on(spec, &Device::Cpu, DType::F32)
}

/// As [`load_parts`], on `device` with weights converted to `dtype`.
pub(crate) fn load_parts_on<C: serde::de::DeserializeOwned>(
    spec: &ModelSpec,
    device: &Device,
    dtype: DType,
) -> Result<(C, candle_nn::VarBuilder<'static>, Device), EncoderError> {
    let folder = Path::new(&spec.path);
    let config_path = folder.join("config.json");
    let config: C = serde_json::from_value(read_json(&config_path)?)
        .map_err(|e| ModelError::BadFile { file: config_path.display().to_string(), message: e.to_string() })?;
    let device = device.clone();
    let weights = folder.join("model.safetensors");
    // SAFETY: the weights file is memory-mapped read-only; we do not modify it while the model lives.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], dtype, &device)? };
    Ok((config, vb, device))
}
