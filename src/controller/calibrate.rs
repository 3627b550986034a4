//! Calibration of int8/uint8 output (`--precision int8|uint8`): rank 0 embeds `--calibration-rows` rows, in
//! eight blocks spread over the dataset, before any other rank starts, and takes each dimension's minimum and
//! maximum (sentence-transformers' `calibration_embeddings`). The ranges then travel in the plan, so every
//! writer quantizes on one scale, and are recorded in the manifest, where a resume finds them.

use std::time::Instant;

use anyhow::Context;

use crate::cli::EncoderKind;
use crate::encoder::select::{place_of, Place};
use crate::encoder::{Backend, BackendOptions, TokenBatch};
use crate::plan::Plan;
use crate::quantize::Ranges;
use crate::tokenize::TextTokenizer;

/// Blocks the calibration rows are read in.
const BLOCKS: u64 = 8;
/// Rows per encoder batch while calibrating.
const BATCH_ROWS: usize = 32;

/// The row ranges calibration reads out of `total` rows: `BLOCKS` blocks of `rows / BLOCKS` rows (all rows when
/// there are no more than `rows`), evenly spaced, sorted and disjoint.
pub fn calibration_ranges(total: u64, rows: u64) -> Vec<(u64, u64)> {
    if total <= rows {
        return vec![(0, total)];
    }
    let per = rows.div_ceil(BLOCKS);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for k in 0..BLOCKS {
        let start = (total - per) * k / (BLOCKS - 1);
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = (start + per).max(last.1),
            _ => out.push((start, start + per)),
        }
    }
    out
}

/// Embeds the calibration rows with the run's model (on a GPU when `--device` gives this process one, else
/// the CPU) and returns their ranges over the stored dimensions. `tokenizer`: the model's, when already loaded.
pub fn calibrate(plan: &Plan, tokenizer: Option<&TextTokenizer>) -> anyhow::Result<Ranges> {
    let c = &plan.config;
    let started = Instant::now();
    let what = format!("--precision {}: calibration", c.precision.name());
    let ranges = calibration_ranges(plan.rows_total, c.calibration_rows as u64);
    let reader = crate::input::ChunkReader::new(plan.inputs.clone(), crate::input::TextRule { field: c.text_field.clone(), chat: c.chat_format })
        .with_context(|| what.clone())?;
    let rows = reader.read(&ranges).with_context(|| what.clone())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loaded;
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => {
            loaded = TextTokenizer::load(&plan.model, c.tokenizer)?;
            &loaded
        }
    };
    let enc = tokenizer.encode_batch(&rows.texts, &plan.prompt, cores).map_err(|e| anyhow::anyhow!("{what}: tokenizing: {e}"))?;
    if enc.rows() < 2 {
        anyhow::bail!("{what}: needs at least 2 rows with text, found {}", enc.rows());
    }
    let mut backend: Box<dyn Backend> = match c.encoder {
        EncoderKind::Noop | EncoderKind::NoopTokenized => Box::new(crate::encoder::noop::NoopBackend { dim: plan.model.output_dim() }),
        kind => {
            let gpu = (place_of(c.device) == Place::Cuda).then_some(0);
            let opts = BackendOptions { threads: cores, reference: kind == EncoderKind::Candle, dtype: c.dtype, gpu };
            crate::encoder::load(&plan.model, opts).map_err(|e| anyhow::anyhow!("{what}: loading model {}: {e}", plan.model.path))?
        }
    };
    let (model_dim, dim) = (backend.dim(), plan.output_dim());
    let mut values = Vec::with_capacity(enc.rows() * dim);
    for first in (0..enc.rows()).step_by(BATCH_ROWS) {
        let last = (first + BATCH_ROWS).min(enc.rows());
        let batch = TokenBatch {
            row_ids: rows.row_ids[first..last].to_vec(),
            lengths: (first..last).map(|i| enc.len_of(i) as u32).collect(),
            ids: (first..last).flat_map(|i| enc.row(i).iter().copied()).collect(),
        };
        let out = backend.embed(&batch).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        // --truncate-dim: the stored dimensions only.
        for row in out.chunks_exact(model_dim) {
            values.extend_from_slice(&row[..dim]);
        }
    }
    eprintln!("{what}: {} rows embedded in {:.1}s", enc.rows(), started.elapsed().as_secs_f64());
    Ranges::of(&values, dim).ok_or_else(|| anyhow::anyhow!("{what}: no rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_blocks_are_spread_sorted_and_disjoint() {
        assert_eq!(calibration_ranges(500, 1000), vec![(0, 500)]);
        let r = calibration_ranges(1_000_000, 1000);
        assert_eq!(r.len(), 8);
        assert_eq!((r[0], r[7]), ((0, 125), (999_875, 1_000_000)));
        assert!(r.windows(2).all(|w| w[0].1 < w[1].0));
        let r = calibration_ranges(1010, 1000);
        assert!(r.windows(2).all(|w| w[0].1 <= w[1].0) && r.first().unwrap().0 == 0 && r.last().unwrap().1 == 1010, "{r:?}");
        assert_eq!(r.iter().map(|(a, b)| b - a).sum::<u64>(), 1000);
        // Blocks that would overlap are merged: 1,010 rows, 1,005 wanted (blocks of 126, 884 / 7 apart).
        let r = calibration_ranges(1010, 1005);
        assert!(r.windows(2).all(|w| w[0].1 < w[1].0) && r.last().unwrap().1 == 1010, "{r:?}");
        assert!(r.len() < 8 && r.iter().map(|(a, b)| b - a).sum::<u64>() >= 1005, "{r:?}");
    }
}
