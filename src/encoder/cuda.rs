//! CUDA as this binary and machine have it: whether the `cuda` feature was built in, how many devices the
//! process sees, and the candle device of one.

use candle_core::Device;

use crate::encoder::contract::EncoderError;

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// CUDA devices this process sees (0 in a build without the `cuda` feature, or without a driver).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The candle device of CUDA GPU `ordinal`.
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> Result<Device, EncoderError> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_device(_ordinal: usize) -> Result<Device, EncoderError> {
    Err(EncoderError::Setting("--device cuda: this binary was built without CUDA (scripts/build-cuda.sh builds one)".into()))
}
