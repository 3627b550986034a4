//! Shared by the architectures: right-padding a flat token batch for models that take a rectangle
//! ([`Padded`]), splitting packed rows over threads for the CPU passes ([`Packed`]), and sentence-transformers'
//! pooling (with Normalize) over the hidden states, on the host in float32.

use candle_core::{DType, Device, Tensor};

use crate::encoder::contract::{Backend, EncoderError, TokenBatch};
use crate::model::{ModelSpec, Pooling};

/// Rejects rows a model cannot take: empty ones (every row has at least its special tokens) and ones longer
/// than `max`.
pub fn check_lengths(batch: &TokenBatch, max: usize) -> Result<(), EncoderError> {
    match batch.lengths.iter().find(|&&n| n == 0 || n as usize > max) {
        Some(&n) => Err(EncoderError::Batch(format!("row length {n} outside 1..={max}"))),
        None => Ok(()),
    }
}

/// Embeds a batch with a model that takes it right-padded, as `(ids, mask)` tensors `(rows, len)` on `device`
/// (mask 1 on tokens, 0 on padding), and returns hidden states `(rows, len, dim)`; then pools on the host.
pub fn embed_padded(
    spec: &ModelSpec,
    device: &Device,
    batch: &TokenBatch,
    forward: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor, EncoderError>,
) -> Result<Vec<f32>, EncoderError> {
    if batch.rows() == 0 {
        return Ok(Vec::new());
    }
    check_lengths(batch, spec.max_seq_length)?;
    let (b, l) = (batch.rows(), batch.max_len());
    let (ids, mask) = pad_right(batch, l);
    let (ids, mask) = (Tensor::from_vec(ids, (b, l), device)?, Tensor::from_vec(mask, (b, l), device)?);
    let hidden: Vec<f32> = forward(&ids, &mask)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(pool(&hidden, &batch.lengths, l, spec.dim, spec.pooling, spec.normalize))
}

/// A model that takes a batch right-padded to a rectangle: `(ids, mask)` tensors `(rows, len)` on its device,
/// hidden states `(rows, len, dim)` back.
pub trait PaddedModel: Send {
    fn device(&self) -> &Device;
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, EncoderError>;
}

/// Any [`PaddedModel`] as a [`Backend`]: each batch padded to its longest row, pooled on the host.
pub struct Padded<M> {
    pub model: M,
    pub spec: ModelSpec,
}

impl<M: PaddedModel> Backend for Padded<M> {
    fn dim(&self) -> usize {
        self.spec.dim
    }

    fn pads(&self) -> bool {
        true
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        embed_padded(&self.spec, self.model.device(), batch, |ids, mask| self.model.forward(ids, mask))
    }
}

/// Right-pads a flat token batch to `len` columns; returns ids and the attention mask.
pub fn pad_right(batch: &TokenBatch, len: usize) -> (Vec<u32>, Vec<u32>) {
    let b = batch.rows();
    let mut ids = vec![0u32; b * len];
    let mut mask = vec![0u32; b * len];
    let mut at = 0;
    for (r, &n) in batch.lengths.iter().enumerate() {
        let n = n as usize;
        ids[r * len..r * len + n].copy_from_slice(&batch.ids[at..at + n]);
        mask[r * len..r * len + n].fill(1);
        at += n;
    }
    (ids, mask)
}

/// Pools `hidden` (`rows x len x dim`, right-padded) into `rows x dim`, then L2-normalizes if asked.
pub fn pool(hidden: &[f32], lengths: &[u32], len: usize, dim: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let mut out = vec![0f32; lengths.len() * dim];
    for (r, &n) in lengths.iter().enumerate() {
        let n = n as usize;
        let row = &mut out[r * dim..(r + 1) * dim];
        let tok = |t: usize| &hidden[(r * len + t) * dim..(r * len + t + 1) * dim];
        match pooling {
            Pooling::Cls => row.copy_from_slice(tok(0)),
            Pooling::LastToken => row.copy_from_slice(tok(n - 1)),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                for t in 0..n {
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o += v;
                    }
                }
                let count = n.max(1) as f32;
                let inv = 1.0 / if pooling == Pooling::Mean { count } else { count.sqrt() };
                row.iter_mut().for_each(|o| *o *= inv);
            }
            Pooling::Max => {
                // Over the row's own tokens (sentence-transformers sets padding to -1e9 first); rows have one.
                row.fill(f32::NEG_INFINITY);
                for t in 0..n {
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o = o.max(*v);
                    }
                }
            }
            Pooling::WeightedMean => {
                for t in 0..n {
                    let w = (t + 1) as f32;
                    for (o, v) in row.iter_mut().zip(tok(t)) {
                        *o += w * v;
                    }
                }
                let inv = 1.0 / ((n * (n + 1) / 2).max(1) as f32);
                row.iter_mut().for_each(|o| *o *= inv);
            }
        }
        if normalize {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// Rejects packed rows a model cannot take: empty rows or rows over `max_len`, ids that do not add up to the
/// lengths, token ids outside the vocabulary.
pub(crate) fn check_packed(ids: &[u32], lengths: &[u32], max_len: usize, vocab: usize) -> Result<(), EncoderError> {
    if let Some(&n) = lengths.iter().find(|&&n| n == 0 || n as usize > max_len) {
        return Err(EncoderError::Batch(format!("row length {n} outside 1..={max_len}")));
    }
    let total: usize = lengths.iter().map(|&n| n as usize).sum();
    if total != ids.len() {
        return Err(EncoderError::Batch(format!("{} token ids for rows of {total} tokens in all", ids.len())));
    }
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(EncoderError::Batch(format!("token id {id} outside the vocabulary ({vocab})"))),
        None => Ok(()),
    }
}

/// A model that runs packed rows (no padding) on the calling thread: `ids` holds the rows back to back,
/// `lengths` their token counts; returns `sum(lengths) x hidden` last hidden states, row-major.
pub trait PackedModel: Sync + Send {
    fn hidden(&self) -> usize;
    fn forward_rows(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError>;
}

/// Any [`PackedModel`] as a [`Backend`]: each batch split into `threads` groups of contiguous rows of about
/// equal cost, one thread per group (each runs the whole stack with single-threaded kernels, no
/// synchronisation between layers), pooled on the host.
pub struct Packed<M> {
    model: M,
    spec: ModelSpec,
    threads: usize,
}

impl<M: PackedModel> Packed<M> {
    /// Refuses a model whose hidden size is not the pooled dimension the folder declares.
    pub fn new(model: M, spec: &ModelSpec, threads: usize) -> Result<Self, EncoderError> {
        if model.hidden() != spec.dim {
            return Err(EncoderError::Setting(format!(
                "{}: hidden size {} differs from the pooled dimension {}",
                spec.path,
                model.hidden(),
                spec.dim
            )));
        }
        Ok(Packed { model, spec: spec.clone(), threads: threads.max(1) })
    }

    /// Pooled (and, if the model says so, normalized) embeddings of packed rows, on the calling thread.
    fn embed_group(&self, ids: &[u32], lengths: &[u32]) -> Result<Vec<f32>, EncoderError> {
        let hidden = self.model.forward_rows(ids, lengths)?;
        let dim = self.spec.dim;
        let mut out = Vec::with_capacity(lengths.len() * dim);
        let mut at = 0;
        for &n in lengths {
            let n = n as usize;
            out.extend(pool(&hidden[at * dim..(at + n) * dim], &[n as u32], n, dim, self.spec.pooling, self.spec.normalize));
            at += n;
        }
        Ok(out)
    }
}

/// Splits rows into at most `parts` contiguous groups of about equal cost (tokens plus attention's n^2 term).
/// Returns the row index where each group ends.
pub fn split_rows(lengths: &[u32], parts: usize, hidden: usize) -> Vec<usize> {
    let cost = |n: u32| n as f64 * (1.0 + n as f64 / (12.0 * hidden.max(1) as f64));
    let total: f64 = lengths.iter().map(|&n| cost(n)).sum();
    let parts = parts.clamp(1, lengths.len().max(1));
    let mut ends = Vec::with_capacity(parts);
    let mut acc = 0.0;
    for (i, &n) in lengths.iter().enumerate() {
        acc += cost(n);
        let group = ends.len() + 1;
        if acc >= total * group as f64 / parts as f64 && ends.len() + 1 < parts {
            ends.push(i + 1);
        }
    }
    ends.push(lengths.len());
    ends.dedup();
    ends
}

impl<M: PackedModel> Backend for Packed<M> {
    fn dim(&self) -> usize {
        self.spec.dim
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        check_lengths(batch, self.spec.max_seq_length)?;
        let ends = split_rows(&batch.lengths, self.threads, self.spec.dim);
        // Token offset of each group's first row.
        let mut groups = Vec::with_capacity(ends.len());
        let (mut row, mut tok) = (0, 0);
        for &end in &ends {
            let n: usize = batch.lengths[row..end].iter().map(|&l| l as usize).sum();
            groups.push((&batch.ids[tok..tok + n], &batch.lengths[row..end]));
            row = end;
            tok += n;
        }
        if groups.len() == 1 {
            return self.embed_group(groups[0].0, groups[0].1);
        }
        let this = &*self;
        let results: Vec<Result<Vec<f32>, EncoderError>> = std::thread::scope(|s| {
            let handles: Vec<_> = groups[1..].iter().map(|&(ids, lens)| s.spawn(move || this.embed_group(ids, lens))).collect();
            let mut results = vec![this.embed_group(groups[0].0, groups[0].1)];
            results.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(EncoderError::Batch("encoder thread panicked".into())))));
            results
        });
        let mut out = Vec::with_capacity(batch.rows() * self.spec.dim);
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_balances_tokens_and_keeps_order() {
        assert_eq!(split_rows(&[10, 10, 10, 10], 2, 384), vec![2, 4]);
        assert_eq!(split_rows(&[100, 1, 1, 1, 1, 96], 2, 384), vec![1, 6]);
        assert_eq!(split_rows(&[5], 4, 384), vec![1]);
        assert_eq!(split_rows(&[5, 5], 1, 384), vec![2]);
        assert_eq!(split_rows(&[], 2, 384), vec![0]);
        let ends = split_rows(&[7; 30], 3, 384);
        assert_eq!(ends, vec![10, 20, 30]);
    }

    #[test]
    fn pooling_modes_on_a_padded_batch() {
        // 2 rows, len 3, dim 2. Row 0 has 2 tokens, row 1 has 3.
        let hidden = [1., 2., 3., 4., 99., 99., 1., 0., 0., 1., 2., 2.];
        let lens = [2, 3];
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Mean, false), vec![2., 3., 1., 1.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Cls, false), vec![1., 2., 1., 0.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::LastToken, false), vec![3., 4., 2., 2.]);
        assert_eq!(pool(&hidden, &lens, 3, 2, Pooling::Max, false), vec![3., 4., 2., 2.]);
        for p in [Pooling::Mean, Pooling::Cls, Pooling::LastToken, Pooling::Max, Pooling::MeanSqrtLen, Pooling::WeightedMean] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "the manifest's name is the metadata's");
        }
        let s = pool(&hidden, &lens, 3, 2, Pooling::MeanSqrtLen, false);
        assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6 && (s[1] - 6.0 / 2f32.sqrt()).abs() < 1e-6, "{s:?}");
        // Weights 1 and 2 (position + 1) over their sum 3: (1*1 + 2*3) / 3, (1*2 + 2*4) / 3.
        let w = pool(&hidden, &lens, 3, 2, Pooling::WeightedMean, false);
        assert!((w[0] - 7.0 / 3.0).abs() < 1e-6 && (w[1] - 10.0 / 3.0).abs() < 1e-6, "{w:?}");
        let n = pool(&hidden, &lens, 3, 2, Pooling::LastToken, true);
        assert!((n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn pad_right_builds_ids_and_mask() {
        let b = TokenBatch { row_ids: vec![0, 1], lengths: vec![1, 3], ids: vec![7, 1, 2, 3] };
        let (ids, mask) = pad_right(&b, 3);
        assert_eq!(ids, vec![7, 0, 0, 1, 2, 3]);
        assert_eq!(mask, vec![1, 0, 0, 1, 1, 1]);
    }
}
