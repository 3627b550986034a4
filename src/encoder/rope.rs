//! Rotary position embeddings as transformers computes them, shared by the architectures that use them
//! (ModernBERT, Gemma3): the per-layer-kind settings of config.json in either layout, and the cos/sin tables.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::encoder::contract::EncoderError;

/// transformers 5's `rope_parameters`: `{"full_attention": {"rope_theta": .., "rope_type": ..}, "sliding_attention": {..}}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RopeParameters {
    pub full_attention: Option<Rope>,
    pub sliding_attention: Option<Rope>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Rope {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
}

/// transformers 5's `layer_types`: per layer whether it slides (`sliding_attention`) or not (`full_attention`).
pub(crate) fn sliding_layers(types: &[String], layers: usize) -> Result<Vec<bool>, String> {
    if types.len() != layers {
        return Err(format!("layer_types has {} entries for {layers} layers", types.len()));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "full_attention" => Ok(false),
            "sliding_attention" => Ok(true),
            other => Err(format!("layer_types: \"{other}\" is neither full_attention nor sliding_attention")),
        })
        .collect()
}

/// Rotates one head's vector by a position's `cos` and `sin` (`head.len() / 2` each), as transformers'
/// `apply_rotary_pos_emb`: the two halves become `(x1 cos - x2 sin, x2 cos + x1 sin)`.
pub(crate) fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (x1, x2) = head.split_at_mut(cos.len());
    for j in 0..cos.len() {
        let (a, b) = (x1[j], x2[j]);
        x1[j] = a * cos[j] - b * sin[j];
        x2[j] = b * cos[j] + a * sin[j];
    }
}

/// The theta of one kind of layer (`kind`: full_attention or sliding_attention): from `rope` (transformers
/// 5), else `flat` (the Hub's older key), else `default`; refused when the RoPE type is not plain.
pub(crate) fn theta(rope: Option<&Rope>, flat: Option<f64>, default: f64, kind: &str) -> Result<f64, String> {
    if let Some(t) = rope.and_then(|r| r.rope_type.as_deref()).filter(|t| *t != "default") {
        return Err(format!("rope_parameters.{kind}.rope_type \"{t}\" is not supported (default)"));
    }
    let theta = rope.and_then(|r| r.rope_theta).or(flat).unwrap_or(default);
    if theta.is_finite() && theta > 1.0 {
        Ok(theta)
    } else {
        Err(format!("the {kind} rope_theta {theta} must be above 1"))
    }
}

/// Rotary tables for positions `0..max` of heads of `d` dims: `cos` and `sin`, `(max, d / 2)`, as transformers
/// computes them (float32: `inv_freq = 1 / theta^(2i / d)`, angle = position x inv_freq).
pub(crate) fn rope_tables(theta: f64, d: usize, max: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor), EncoderError> {
    let (cos, sin) = rope_angles(theta, d, max);
    let table = |v: Vec<f32>| -> Result<Tensor, EncoderError> { Ok(Tensor::from_vec(v, (max, d / 2), device)?.to_dtype(dtype)?) };
    Ok((table(cos)?, table(sin)?))
}

/// The rotary tables as host vectors, `max x d / 2` row-major (see [`rope_tables`]).
pub(crate) fn rope_angles(theta: f64, d: usize, max: usize) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = (0..d / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32).collect();
    let angles: Vec<f32> = (0..max).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
    (angles.iter().map(|a| a.cos()).collect(), angles.iter().map(|a| a.sin()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_hold_cos_and_sin_of_position_times_frequency() {
        let (cos, sin) = rope_tables(10_000.0, 4, 3, &Device::Cpu, DType::F32).unwrap();
        let (cos, sin) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
        // Frequencies 1 and 1/100 for a head of 4.
        assert_eq!(cos[0], vec![1.0, 1.0]);
        assert!((cos[2][0] - 2f32.cos()).abs() < 1e-7 && (sin[2][1] - 0.02f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn theta_prefers_rope_parameters_and_refuses_scaled_types() {
        let r = Rope { rope_theta: Some(5e5), rope_type: Some("default".into()) };
        assert_eq!(theta(Some(&r), Some(1e4), 1e6, "full_attention"), Ok(5e5));
        assert_eq!(theta(None, Some(1e4), 1e6, "full_attention"), Ok(1e4));
        assert_eq!(theta(None, None, 1e6, "full_attention"), Ok(1e6));
        let yarn = Rope { rope_theta: None, rope_type: Some("yarn".into()) };
        assert!(theta(Some(&yarn), None, 1e6, "sliding_attention").unwrap_err().contains("\"yarn\""));
        assert!(theta(None, Some(0.5), 1e6, "full_attention").is_err());
    }
}
