//! The one place that decides which code runs a model: the rule table (architecture x place x `--encoder`
//! -> engine and the dtypes it takes), the refusals it words, and the loader that builds the backend.
//!
//! The command line checks `--device`/`--dtype`/`--encoder` against the table before the model is read
//! (some architecture must take them), the controller checks them again with the model's architecture before
//! any rank starts, and encoders load through [`load`]: the three use the same rows, so they cannot disagree.

use candle_core::{DType, Device};

use crate::encoder::contract::{Backend, BackendOptions, DeviceChoice, Dtype, EncoderError};
use crate::encoder::cuda::{cuda_device, cuda_device_count};
use crate::encoder::head::DenseHead;
use crate::encoder::{bert, bert_candle, gemma, modernbert, mpnet, qwen3, reference};
use crate::model::{Architecture, ModelSpec};

/// Where an encoder computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Cpu,
    Cuda,
}

impl Place {
    fn words(self) -> &'static str {
        match self {
            Place::Cpu => "the CPU",
            Place::Cuda => "CUDA GPUs",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Place::Cpu => "cpu",
            Place::Cuda => "cuda",
        }
    }
}

/// The code that runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// This crate's CPU BERT: packed rows, threads per batch (`bert.rs`); BERT and MPNet.
    BertCpu,
    /// candle-transformers' `BertModel`, the reference (`--encoder candle`, `reference.rs`).
    BertReference,
    /// BERT (and XLM-RoBERTa) on candle tensor ops, for any candle device and dtype (`bert_candle.rs`).
    BertCandle,
    /// MPNet on candle tensor ops (`mpnet.rs`): on GPUs, and the CPU reference (`--encoder candle`).
    Mpnet,
    /// ModernBERT's packed CPU pass (`modernbert.rs`).
    ModernBertCpu,
    /// ModernBERT on candle tensor ops (`modernbert.rs`): on GPUs, and the CPU reference (`--encoder candle`).
    ModernBert,
    /// Gemma3's packed CPU pass (`gemma.rs`).
    GemmaCpu,
    /// Gemma3 as a bidirectional encoder on candle tensor ops (`gemma.rs`): on GPUs, and the CPU reference
    /// (`--encoder candle`).
    Gemma,
    /// candle-transformers' Qwen3 (`qwen3.rs`).
    Qwen3,
}

/// One row of the table. `reference`: `Some(b)` when the row applies only with (`true`) or without
/// `--encoder candle`; `None` for both.
struct Rule {
    arch: Architecture,
    place: Place,
    reference: Option<bool>,
    engine: Engine,
    dtypes: &'static [Dtype],
}

use Dtype::{Bf16, Int8, F16, F32};

/// Which architecture runs where, on what, in which dtypes. A combination without a row is refused.
const RULES: &[Rule] = &[
    Rule { arch: Architecture::Bert, place: Place::Cpu, reference: Some(false), engine: Engine::BertCpu, dtypes: &[F32, Bf16, Int8] },
    Rule { arch: Architecture::Bert, place: Place::Cpu, reference: Some(true), engine: Engine::BertReference, dtypes: &[F32] },
    Rule { arch: Architecture::Bert, place: Place::Cuda, reference: None, engine: Engine::BertCandle, dtypes: &[F32, F16, Bf16] },
    // int8 is left out for MPNet: its activation outliers cost too much (cosine 0.74 on a long repeated word).
    Rule { arch: Architecture::Mpnet, place: Place::Cpu, reference: Some(false), engine: Engine::BertCpu, dtypes: &[F32, Bf16] },
    Rule { arch: Architecture::Mpnet, place: Place::Cpu, reference: Some(true), engine: Engine::Mpnet, dtypes: &[F32] },
    Rule { arch: Architecture::Mpnet, place: Place::Cuda, reference: None, engine: Engine::Mpnet, dtypes: &[F32, F16, Bf16] },
    // XLM-RoBERTa is BERT with RoBERTa positions; the reference on the CPU is the candle BERT (candle-transformers'
    // BertModel has no position offset). int8 is left out until checked on real weights.
    Rule { arch: Architecture::XlmRoberta, place: Place::Cpu, reference: Some(false), engine: Engine::BertCpu, dtypes: &[F32, Bf16] },
    Rule { arch: Architecture::XlmRoberta, place: Place::Cpu, reference: Some(true), engine: Engine::BertCandle, dtypes: &[F32] },
    Rule { arch: Architecture::XlmRoberta, place: Place::Cuda, reference: None, engine: Engine::BertCandle, dtypes: &[F32, F16, Bf16] },
    // RoBERTa: XLM-RoBERTa's layers and positions.
    Rule { arch: Architecture::Roberta, place: Place::Cpu, reference: Some(false), engine: Engine::BertCpu, dtypes: &[F32, Bf16] },
    Rule { arch: Architecture::Roberta, place: Place::Cpu, reference: Some(true), engine: Engine::BertCandle, dtypes: &[F32] },
    Rule { arch: Architecture::Roberta, place: Place::Cuda, reference: None, engine: Engine::BertCandle, dtypes: &[F32, F16, Bf16] },
    Rule { arch: Architecture::ModernBert, place: Place::Cpu, reference: Some(false), engine: Engine::ModernBertCpu, dtypes: &[F32, Bf16] },
    Rule { arch: Architecture::ModernBert, place: Place::Cpu, reference: Some(true), engine: Engine::ModernBert, dtypes: &[F32] },
    Rule { arch: Architecture::ModernBert, place: Place::Cuda, reference: None, engine: Engine::ModernBert, dtypes: &[F32, F16, Bf16] },
    Rule { arch: Architecture::Gemma3Text, place: Place::Cpu, reference: Some(false), engine: Engine::GemmaCpu, dtypes: &[F32, Bf16] },
    Rule { arch: Architecture::Gemma3Text, place: Place::Cpu, reference: Some(true), engine: Engine::Gemma, dtypes: &[F32] },
    Rule { arch: Architecture::Gemma3Text, place: Place::Cuda, reference: None, engine: Engine::Gemma, dtypes: &[F32, F16, Bf16] },
    Rule { arch: Architecture::Qwen3, place: Place::Cpu, reference: None, engine: Engine::Qwen3, dtypes: &[F32] },
    Rule { arch: Architecture::Qwen3, place: Place::Cuda, reference: None, engine: Engine::Qwen3, dtypes: &[F32, F16, Bf16] },
];

fn rows(arch: Option<Architecture>, reference: bool) -> impl Iterator<Item = &'static Rule> {
    RULES.iter().filter(move |r| arch.is_none_or(|a| a == r.arch) && r.reference.is_none_or(|x| x == reference))
}

fn list(dtypes: &[Dtype]) -> String {
    let names: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
    match names.split_last() {
        None => "nothing".into(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The engine for `arch` (`None`: the model is not read yet, any architecture may do) on `place`, or the
/// refusal, naming the flag and what would run instead.
pub fn choose(arch: Option<Architecture>, place: Place, reference: bool, dtype: Dtype) -> Result<Engine, String> {
    let here: Vec<&Rule> = rows(arch, reference).filter(|r| r.place == place).collect();
    if let Some(rule) = here.iter().find(|r| r.dtypes.contains(&dtype)) {
        if place == Place::Cpu {
            dtype.cpu_has_instructions()?;
        }
        return Ok(rule.engine);
    }
    let what = match arch {
        Some(a) => format!(" for {} models", a.name()),
        None => String::new(),
    };
    let with = if reference { " with --encoder candle" } else { "" };
    let mut taken: Vec<Dtype> = Vec::new();
    for d in here.iter().flat_map(|r| r.dtypes) {
        if !taken.contains(d) {
            taken.push(*d);
        }
    }
    if taken.is_empty() {
        return Err(format!("--device {}: no encoder runs there{what}{with}", place.short()));
    }
    let elsewhere: Vec<Place> = [Place::Cpu, Place::Cuda]
        .into_iter()
        .filter(|&p| p != place && rows(arch, reference).any(|r| r.place == p && r.dtypes.contains(&dtype)))
        .collect();
    match elsewhere.as_slice() {
        [other] => Err(format!(
            "--dtype {} runs on {} only{what}{with} (--device {}); on {} use {}",
            dtype.name(),
            other.words(),
            other.short(),
            place.short(),
            list(&taken)
        )),
        _ => Err(format!("--dtype {}: on {}{what}{with} use {}", dtype.name(), place.short(), list(&taken))),
    }
}

/// Where `--device` puts this process's encoders: `auto` is CUDA when this process sees a GPU.
pub fn place_of(device: DeviceChoice) -> Place {
    match device {
        DeviceChoice::Cpu => Place::Cpu,
        DeviceChoice::Cuda => Place::Cuda,
        DeviceChoice::Auto if cuda_device_count() > 0 => Place::Cuda,
        DeviceChoice::Auto => Place::Cpu,
    }
}

/// Checks `--device`/`--dtype`/`--encoder candle` against the table, for `arch` or (`None`) for some
/// architecture.
pub fn check(arch: Option<Architecture>, device: DeviceChoice, reference: bool, dtype: Dtype) -> Result<(), String> {
    choose(arch, place_of(device), reference, dtype).map(|_| ())
}

/// Builds the encoder for `spec` as the table says, with its Dense modules (and Normalize after them) when it
/// has any.
pub fn load(spec: &ModelSpec, opts: BackendOptions) -> Result<Box<dyn Backend>, EncoderError> {
    if spec.dense.is_empty() {
        return load_pooled(spec, opts);
    }
    let pooled = ModelSpec { dense: Vec::new(), normalize: false, ..spec.clone() };
    Ok(Box::new(DenseHead::new(spec, load_pooled(&pooled, opts)?)?))
}

/// The transformer and its pooling (and Normalize, when the spec says so).
fn load_pooled(spec: &ModelSpec, opts: BackendOptions) -> Result<Box<dyn Backend>, EncoderError> {
    let place = if opts.gpu.is_some() { Place::Cuda } else { Place::Cpu };
    let engine = choose(Some(spec.architecture), place, opts.reference, opts.dtype).map_err(EncoderError::Setting)?;
    let device = match opts.gpu {
        Some(ordinal) => cuda_device(ordinal)?,
        None => Device::Cpu,
    };
    let dtype = match opts.dtype {
        F32 | Int8 => DType::F32,
        F16 => DType::F16,
        Bf16 => DType::BF16,
    };
    Ok(match engine {
        Engine::BertCpu => Box::new(bert::BertCpuBackend::load(spec, opts.threads, opts.dtype)?),
        Engine::BertReference => Box::new(reference::ReferenceBertBackend::load(spec)?),
        Engine::BertCandle => Box::new(bert_candle::BertCandleBackend::load(spec, &device, dtype)?),
        Engine::Mpnet => Box::new(mpnet::MpnetBackend::load(spec, &device, dtype)?),
        Engine::ModernBertCpu => Box::new(modernbert::ModernBertCpuBackend::load(spec, opts.threads, opts.dtype)?),
        Engine::ModernBert => Box::new(modernbert::ModernBertBackend::load(spec, &device, dtype)?),
        Engine::GemmaCpu => Box::new(gemma::GemmaCpuBackend::load(spec, opts.threads, opts.dtype)?),
        Engine::Gemma => Box::new(gemma::GemmaBackend::load(spec, &device, dtype)?),
        Engine::Qwen3 => Box::new(qwen3::Qwen3Backend::load_on(spec, &device, dtype)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::kernels;

    #[test]
    fn every_architecture_runs_float32_everywhere_and_each_refusal_names_the_flag() {
        for arch in Architecture::ALL {
            for place in [Place::Cpu, Place::Cuda] {
                for reference in [false, true] {
                    assert!(choose(Some(arch), place, reference, F32).is_ok(), "{arch:?} {place:?} {reference}");
                }
            }
        }
        let e = choose(None, Place::Cpu, false, F16).unwrap_err();
        assert_eq!(e, "--dtype float16 runs on CUDA GPUs only (--device cuda); on cpu use float32, bfloat16 or int8");
        let e = choose(None, Place::Cuda, false, Int8).unwrap_err();
        assert_eq!(e, "--dtype int8 runs on the CPU only (--device cpu); on cuda use float32, float16 or bfloat16");
        let e = choose(Some(Architecture::Qwen3), Place::Cpu, false, Bf16).unwrap_err();
        assert_eq!(e, "--dtype bfloat16 runs on CUDA GPUs only for qwen3 models (--device cuda); on cpu use float32");
        let e = choose(Some(Architecture::Bert), Place::Cpu, true, Int8).unwrap_err();
        assert_eq!(e, "--dtype int8: on cpu for bert models with --encoder candle use float32");
        // A GPU takes the half dtypes whatever the CPU has; the reference flag does not matter there.
        assert_eq!(choose(Some(Architecture::Bert), Place::Cuda, true, F16), Ok(Engine::BertCandle));
        assert_eq!(choose(Some(Architecture::Qwen3), Place::Cuda, false, Bf16), Ok(Engine::Qwen3));
    }

    #[test]
    fn cpu_half_modes_follow_the_machine() {
        assert_eq!(choose(Some(Architecture::Bert), Place::Cpu, false, Bf16).is_ok(), kernels::has_bf16_dot());
        assert_eq!(choose(Some(Architecture::Bert), Place::Cpu, false, Int8).is_ok(), kernels::has_int8_dot());
    }

    #[test]
    fn flags_alone_pass_when_some_architecture_takes_them() {
        assert!(check(None, DeviceChoice::Cpu, false, F32).is_ok());
        assert!(check(None, DeviceChoice::Cuda, true, F16).is_ok());
        assert!(check(None, DeviceChoice::Cpu, false, F16).is_err());
    }
}
