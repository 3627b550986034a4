//! The encoder wing: the contract every encoder meets (`contract`), the rule table that picks and loads one
//! (`select`), one file per architecture (`bert` on the CPU, `bert_candle` on any candle device, `reference`,
//! `mpnet`, `modernbert`, `gemma`, `qwen3`), the modules after pooling (`head`: Dense, Normalize), the placeholder (`noop`), shared pooling and
//! padding (`pool`), the CPU kernels and CUDA.
//!
//! It depends on the model folder's declarations (`crate::model`) and nothing else of the pipeline.

pub mod bert;
pub mod bert_candle;
pub mod contract;
pub mod cuda;
pub mod gemma;
pub mod head;
pub mod kernels;
pub mod modernbert;
pub mod mpnet;
pub mod noop;
mod parts;
pub mod pool;
pub mod qwen3;
pub mod reference;
mod rope;
pub mod select;

pub use contract::{Backend, BackendOptions, DeviceChoice, Dtype, EncoderError, TokenBatch};
pub use select::load;
