//! Output precision (`--precision`): embeddings stored as float32, float16, or quantized as sentence-transformers'
//! `quantize_embeddings` does (int8/uint8 per-dimension buckets from calibration ranges; binary/ubinary one bit
//! per dimension, packed 8 to a byte).

use std::sync::Arc;

use arrow_array::{ArrayRef, Float16Array, Float32Array, Int8Array, UInt8Array};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

/// How embeddings are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Float32,
    /// IEEE half precision, rounded to nearest.
    Float16,
    /// `floor((x - min) / step)` clipped to 0..=255, minus 128; `step = (max - min) / 255` per dimension.
    Int8,
    /// As int8 without the shift: 0..=255.
    Uint8,
    /// One bit per dimension (`x > 0`), packed big-endian 8 to a byte, minus 128 (as int8).
    Binary,
    /// As binary, as uint8.
    Ubinary,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Float16 => "float16",
            Precision::Int8 => "int8",
            Precision::Uint8 => "uint8",
            Precision::Binary => "binary",
            Precision::Ubinary => "ubinary",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        [Precision::Float32, Precision::Float16, Precision::Int8, Precision::Uint8, Precision::Binary, Precision::Ubinary]
            .into_iter()
            .find(|p| p.name() == s)
    }

    pub fn is_float32(&self) -> bool {
        *self == Precision::Float32
    }

    /// Whether it needs calibration ranges.
    pub fn scalar(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Uint8)
    }

    /// Values stored per embedding of `dim` dimensions.
    pub fn stored_dim(self, dim: usize) -> usize {
        match self {
            Precision::Binary | Precision::Ubinary => dim.div_ceil(8),
            _ => dim,
        }
    }

    /// The Arrow type of a stored value.
    pub fn value_type(self) -> DataType {
        match self {
            Precision::Float32 => DataType::Float32,
            Precision::Float16 => DataType::Float16,
            Precision::Int8 | Precision::Binary => DataType::Int8,
            Precision::Uint8 | Precision::Ubinary => DataType::UInt8,
        }
    }
}

/// Per-dimension calibration ranges of int8/uint8 (sentence-transformers' `ranges`: row 0 the minimum, row 1
/// the maximum of each dimension over the calibration embeddings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    /// The per-dimension minimum and maximum of `values` (`rows x dim`); `None` without rows.
    pub fn of(values: &[f32], dim: usize) -> Option<Ranges> {
        let mut rows = values.chunks_exact(dim.max(1));
        let first = rows.next()?;
        let (mut min, mut max) = (first.to_vec(), first.to_vec());
        for row in rows {
            for ((lo, hi), &v) in min.iter_mut().zip(max.iter_mut()).zip(row) {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
        Some(Ranges { min, max })
    }

    /// Checks them for `dim` dimensions: one finite minimum and maximum each, minimum at most maximum.
    pub fn check(&self, dim: usize) -> Result<(), String> {
        if self.min.len() != dim || self.max.len() != dim {
            return Err(format!("ranges of {} and {} values for {dim} dimensions", self.min.len(), self.max.len()));
        }
        match self.min.iter().zip(&self.max).position(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi)) {
            Some(i) => Err(format!("dimension {i}: minimum {} and maximum {} are not a finite range", self.min[i], self.max[i])),
            None => Ok(()),
        }
    }
}

/// The stored values of `values` (`rows x dim`, row-major): `rows x stored_dim` of the precision's type
/// (float32 takes the vector as it is). `ranges` must be there (and checked) for int8/uint8.
pub fn quantize(values: Vec<f32>, dim: usize, precision: Precision, ranges: Option<&Ranges>) -> Result<ArrayRef, String> {
    Ok(match precision {
        Precision::Float32 => Arc::new(Float32Array::from(values)),
        Precision::Float16 => Arc::new(Float16Array::from(values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>())),
        Precision::Int8 | Precision::Uint8 => {
            let r = ranges.ok_or_else(|| format!("--precision {}: no calibration ranges", precision.name()))?;
            // As numpy in float32: steps = (max - min) / 255, 1 where that is 0; floor((x - min) / step).
            let steps: Vec<f32> = r.min.iter().zip(&r.max).map(|(lo, hi)| (hi - lo) / 255.0).map(|s| if s == 0.0 { 1.0 } else { s }).collect();
            let bucket = |i: usize, v: f32| ((v - r.min[i % dim]) / steps[i % dim]).floor().clamp(0.0, 255.0) as u8;
            if precision == Precision::Uint8 {
                Arc::new(UInt8Array::from(values.iter().enumerate().map(|(i, &v)| bucket(i, v)).collect::<Vec<_>>()))
            } else {
                Arc::new(Int8Array::from(values.iter().enumerate().map(|(i, &v)| (bucket(i, v) as i16 - 128) as i8).collect::<Vec<_>>()))
            }
        }
        Precision::Binary | Precision::Ubinary => {
            let mut packed = Vec::with_capacity(values.len() / dim.max(1) * dim.div_ceil(8));
            for row in values.chunks_exact(dim.max(1)) {
                for byte in row.chunks(8) {
                    packed.push(byte.iter().enumerate().fold(0u8, |b, (k, &v)| b | (u8::from(v > 0.0) << (7 - k))));
                }
            }
            if precision == Precision::Ubinary {
                Arc::new(UInt8Array::from(packed))
            } else {
                Arc::new(Int8Array::from(packed.into_iter().map(|b| (b as i16 - 128) as i8).collect::<Vec<_>>()))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn scalar_buckets_follow_sentence_transformers() {
        // Two dimensions; ranges [0, 2.55] and [-1, -1] (a constant dimension: step 1).
        let r = Ranges { min: vec![0.0, -1.0], max: vec![2.55, -1.0] };
        let values = [0.0, -1.0, 0.011, 5.0, 2.55, -3.0, -0.5, -0.5];
        let u = quantize(values.to_vec(), 2, Precision::Uint8, Some(&r)).unwrap();
        let u = u.as_any().downcast_ref::<UInt8Array>().unwrap().values().to_vec();
        // floor(0.011 / 0.01) = 1; 2.55 / 0.01 = 255 (float32: 254.99999 floors to 254 or 255 as numpy does);
        // below the minimum clips to 0; the constant dimension: floor(x + 1) clipped.
        assert_eq!((u[0], u[1], u[2], u[3], u[5], u[6], u[7]), (0, 0, 1, 6, 0, 0, 0));
        assert!(u[4] == 254 || u[4] == 255);
        let i = quantize(values.to_vec(), 2, Precision::Int8, Some(&r)).unwrap();
        let i = i.as_any().downcast_ref::<Int8Array>().unwrap().values().to_vec();
        assert_eq!(i.iter().zip(&u).filter(|(a, b)| **a as i16 + 128 != **b as i16).count(), 0, "int8 is uint8 - 128");
        assert!(quantize(values.to_vec(), 2, Precision::Int8, None).unwrap_err().contains("calibration"));
    }

    #[test]
    fn binary_packs_big_endian_bits_as_numpy_packbits() {
        // 10 dims: bits 1011000001 -> bytes 0b10110000, 0b01000000 (the last byte padded with zeros).
        let row = [1.0, -1.0, 0.5, 2.0, 0.0, -0.1, -3.0, -2.0, -1.0, 0.25];
        let u = quantize(row.to_vec(), 10, Precision::Ubinary, None).unwrap();
        assert_eq!(u.as_any().downcast_ref::<UInt8Array>().unwrap().values().to_vec(), vec![0b1011_0000, 0b0100_0000]);
        let b = quantize(row.to_vec(), 10, Precision::Binary, None).unwrap();
        assert_eq!(
            b.as_any().downcast_ref::<Int8Array>().unwrap().values().to_vec(),
            vec![(0b1011_0000i16 - 128) as i8, (0b0100_0000i16 - 128) as i8]
        );
        assert_eq!((Precision::Binary.stored_dim(10), Precision::Int8.stored_dim(10)), (2, 10));
        let h = quantize([1.0, 0.1].to_vec(), 2, Precision::Float16, None).unwrap();
        let h = h.as_any().downcast_ref::<Float16Array>().unwrap();
        assert_eq!((h.len(), h.value(0).to_f32(), h.value(1)), (2, 1.0, half::f16::from_f32(0.1)));
    }

    #[test]
    fn every_flag_value_is_a_precision_of_that_name() {
        for name in crate::cli::PRECISIONS {
            assert_eq!(Precision::parse(name).map(Precision::name), Some(name));
        }
    }

    #[test]
    fn ranges_are_per_dimension_and_checked() {
        let r = Ranges::of(&[1.0, -2.0, 3.0, 0.5, -1.0, 4.0], 2).unwrap();
        assert_eq!(r, Ranges { min: vec![-1.0, -2.0], max: vec![3.0, 4.0] });
        assert!(r.check(2).is_ok() && r.check(3).is_err());
        assert!(Ranges { min: vec![1.0], max: vec![0.0] }.check(1).unwrap_err().contains("dimension 0"));
        assert!(Ranges { min: vec![f32::NAN], max: vec![0.0] }.check(1).is_err());
        assert_eq!(Ranges::of(&[], 2), None);
    }

    #[test]
    fn every_precision_equals_sentence_transformers_quantize_embeddings() {
        // tests/fixtures/quantize-reference.json (scripts/make-quantize-fixtures.py): sentence-transformers'
        // own outputs for random rows, ranges from a separate calibration set, one constant dimension.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quantize-reference.json");
        let f: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect()
        };
        let dim = f["dim"].as_u64().unwrap() as usize;
        let (emb, cal) = (floats(&f["embeddings"]), floats(&f["calibration"]));
        let ranges = Ranges::of(&cal, dim).unwrap();
        let want_min: Vec<f32> = f["ranges"]["min"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(ranges.min, want_min);
        for (name, precision) in
            [("int8", Precision::Int8), ("uint8", Precision::Uint8), ("binary", Precision::Binary), ("ubinary", Precision::Ubinary)]
        {
            let want: Vec<i64> = f[name].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
            let got = quantize(emb.to_vec(), dim, precision, Some(&ranges)).unwrap();
            let got: Vec<i64> = match precision.value_type() {
                DataType::Int8 => got.as_any().downcast_ref::<Int8Array>().unwrap().values().iter().map(|&v| v as i64).collect(),
                _ => got.as_any().downcast_ref::<UInt8Array>().unwrap().values().iter().map(|&v| v as i64).collect(),
            };
            assert_eq!(got, want, "{name}");
        }
    }
}
