//! sentence-transformers' modules after pooling: Dense layers (their activations and residuals) and then
//! Normalize, on the host in float32, wrapped around any backend that pools.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::encoder::contract::{Backend, EncoderError, TokenBatch};
use crate::encoder::kernels;
use crate::model::{Activation, DenseSpec, ModelSpec};

/// One Dense module, its weights transposed to `in x out` (row-major GEMM).
struct Dense {
    spec: DenseSpec,
    wt: Vec<f32>,
    bias: Vec<f32>,
    /// `use_residual` with other sizes: the projection of the input, `in x out`.
    residual_wt: Option<Vec<f32>>,
}

impl Dense {
    fn load(folder: &Path, spec: &DenseSpec) -> Result<Dense, EncoderError> {
        let file = folder.join(&spec.path).join(&spec.weights);
        let bad = |message: String| EncoderError::BadWeights { file: file.display().to_string(), message };
        let tensors: Vec<(String, Tensor)> = if spec.weights.ends_with(".safetensors") {
            candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| bad(e.to_string()))?.into_iter().collect()
        } else {
            candle_core::pickle::read_all(&file).map_err(|e| bad(e.to_string()))?
        };
        let take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, EncoderError> {
            let t = tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| bad(format!("no tensor {name}")))?;
            if t.dims() != shape {
                return Err(bad(format!("{name} has shape {:?}, config.json implies {shape:?}", t.dims())));
            }
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let (i, o) = (spec.in_features, spec.out_features);
        let transpose = |w: Vec<f32>| -> Vec<f32> {
            let mut wt = vec![0f32; i * o];
            for r in 0..o {
                for c in 0..i {
                    wt[c * o + r] = w[r * i + c];
                }
            }
            wt
        };
        let wt = transpose(take("linear.weight", &[o, i])?);
        let bias = if spec.bias { take("linear.bias", &[o])? } else { vec![0.0; o] };
        let residual_wt = if spec.residual && i != o { Some(transpose(take("residual.weight", &[o, i])?)) } else { None };
        Ok(Dense { spec: spec.clone(), wt, bias, residual_wt })
    }

    /// `rows x in` -> `rows x out`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (i, o) = (self.spec.in_features, self.spec.out_features);
        let mut y = vec![0f32; rows * o];
        kernels::matmul_bias(x, &self.wt, &self.bias, &mut y, rows, i, o);
        activate(&mut y, self.spec.activation);
        if self.spec.residual {
            match &self.residual_wt {
                None => kernels::add_assign(&mut y, x),
                Some(rt) => {
                    let mut r = vec![0f32; rows * o];
                    kernels::matmul_bias(x, rt, &vec![0.0; o], &mut r, rows, i, o);
                    kernels::add_assign(&mut y, &r);
                }
            }
        }
        y
    }
}

/// torch's activations, in float32.
fn activate(y: &mut [f32], activation: Activation) {
    let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
    match activation {
        Activation::Identity => {}
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Gelu => kernels::gelu_erf(y),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Silu => y.iter_mut().for_each(|v| *v *= sigmoid(*v)),
    }
}

/// A backend that pools (without normalizing), followed by the model's Dense modules and Normalize.
pub struct DenseHead {
    inner: Box<dyn Backend>,
    layers: Vec<Dense>,
    normalize: bool,
    dim: usize,
}

impl DenseHead {
    /// `inner` must pool `spec`'s hidden states without normalizing them.
    pub fn new(spec: &ModelSpec, inner: Box<dyn Backend>) -> Result<DenseHead, EncoderError> {
        let folder = Path::new(&spec.path);
        let layers = spec.dense.iter().map(|d| Dense::load(folder, d)).collect::<Result<Vec<_>, _>>()?;
        Ok(DenseHead { inner, layers, normalize: spec.normalize, dim: spec.output_dim() })
    }
}

impl Backend for DenseHead {
    fn dim(&self) -> usize {
        self.dim
    }

    fn pads(&self) -> bool {
        self.inner.pads()
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        let mut x = self.inner.embed(batch)?;
        let rows = batch.rows();
        for layer in &self.layers {
            x = layer.forward(&x, rows);
        }
        if self.normalize {
            for row in x.chunks_exact_mut(self.dim) {
                let n = kernels::norm(row).max(1e-12);
                row.iter_mut().for_each(|v| *v /= n);
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_are_torchs() {
        let mut y = vec![-2.0f32, -0.5, 0.0, 0.5, 2.0];
        let x = y.clone();
        let close = |a: &[f32], f: fn(f64) -> f64| a.iter().zip(&x).all(|(got, &v)| (*got as f64 - f(v as f64)).abs() < 1e-6);
        activate(&mut y, Activation::Tanh);
        assert!(close(&y, f64::tanh), "{y:?}");
        let mut y = x.clone();
        activate(&mut y, Activation::Sigmoid);
        assert!(close(&y, |v| 1.0 / (1.0 + (-v).exp())), "{y:?}");
        let mut y = x.clone();
        activate(&mut y, Activation::Silu);
        assert!(close(&y, |v| v / (1.0 + (-v).exp())), "{y:?}");
        let mut y = x.clone();
        activate(&mut y, Activation::Relu);
        assert_eq!(y, vec![0.0, 0.0, 0.0, 0.5, 2.0]);
        let mut y = x.clone();
        activate(&mut y, Activation::Identity);
        assert_eq!(y, x);
        let mut y = x.clone();
        activate(&mut y, Activation::Gelu);
        // GELU(2) = 2 * Phi(2) = 1.9544997361.
        assert!((y[4] - 1.954_499_7).abs() < 1e-5 && y[2] == 0.0, "{y:?}");
    }

    #[test]
    fn a_dense_layer_is_linear_activation_and_residual() {
        // 2 -> 3, W = [[1, 0], [0, 1], [1, 1]], b = [0, 0, -1], ReLU, with a projected residual R = 2 W.
        let spec = DenseSpec {
            path: String::new(),
            weights: String::new(),
            in_features: 2,
            out_features: 3,
            bias: true,
            activation: Activation::Relu,
            residual: true,
            weights_sha256: String::new(),
        };
        let wt = vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let d = Dense { spec, wt: wt.clone(), bias: vec![0.0, 0.0, -1.0], residual_wt: Some(wt.iter().map(|v| v * 2.0).collect()) };
        // x = (1, -2): W x + b = (1, -2, -2) -> ReLU (1, 0, 0); R x = (2, -4, -2).
        assert_eq!(d.forward(&[1.0, -2.0], 1), vec![3.0, -4.0, -2.0]);
    }
}
