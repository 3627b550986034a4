//! `--long-text chunk`: a row longer than the model's max length becomes windows of that length, each with
//! the row's leading tokens (special tokens and the prompt's) and trailing special tokens, and the windows'
//! embeddings become one per row again: their mean weighted by each window's token count, normalized when
//! the model normalizes.

use serde::{Deserialize, Serialize};

use crate::encoder::TokenBatch;

/// The longest row loaders hand encoders whole under `--long-text chunk` (longer ones are cut there and
/// counted as truncated): 1,048,576 tokens, a few MB of text.
pub const CHUNK_LIMIT: usize = 1 << 20;

/// How rows are cut into windows: at most `max_len` tokens each, repeating the row's first `head` and last
/// `tail` tokens in every window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub max_len: usize,
    pub head: usize,
    pub tail: usize,
}

impl WindowSpec {
    /// Refused when the repeated tokens leave no room for text.
    pub fn new(max_len: usize, head: usize, tail: usize) -> Result<WindowSpec, String> {
        if head + tail >= max_len {
            return Err(format!(
                "--long-text chunk: windows of {max_len} tokens leave no room for text after {head} leading (special and prompt) and {tail} trailing tokens"
            ));
        }
        Ok(WindowSpec { max_len, head, tail })
    }

    /// Text tokens per window.
    pub fn step(&self) -> usize {
        self.max_len - self.head - self.tail
    }

    /// Whether any row of `batch` is longer than a window.
    pub fn needed(&self, batch: &TokenBatch) -> bool {
        batch.lengths.iter().any(|&n| n as usize > self.max_len)
    }

    /// The windows of `batch`'s rows, in row order (a row that fits is its own single window), and how many
    /// windows each row has.
    pub fn split(&self, batch: &TokenBatch) -> (TokenBatch, Vec<usize>) {
        let mut out = TokenBatch { row_ids: Vec::new(), lengths: Vec::new(), ids: Vec::with_capacity(batch.ids.len()) };
        let mut counts = Vec::with_capacity(batch.rows());
        let mut at = 0;
        for (&row_id, &n) in batch.row_ids.iter().zip(&batch.lengths) {
            let row = &batch.ids[at..at + n as usize];
            at += n as usize;
            if row.len() <= self.max_len {
                out.row_ids.push(row_id);
                out.lengths.push(n);
                out.ids.extend_from_slice(row);
                counts.push(1);
                continue;
            }
            let (head, tail) = (&row[..self.head], &row[row.len() - self.tail..]);
            let text = &row[self.head..row.len() - self.tail];
            let mut k = 0;
            for part in text.chunks(self.step()) {
                out.row_ids.push(row_id);
                out.lengths.push((head.len() + part.len() + tail.len()) as u32);
                out.ids.extend_from_slice(head);
                out.ids.extend_from_slice(part);
                out.ids.extend_from_slice(tail);
                k += 1;
            }
            counts.push(k);
        }
        (out, counts)
    }
}

/// Consecutive parts of `batch` of at most `rows` rows each (a batch of many windows is embedded a part at a
/// time, so one long row cannot make a batch of any size).
pub fn parts(batch: &TokenBatch, rows: usize) -> Vec<TokenBatch> {
    let mut out = Vec::new();
    let (mut row, mut at) = (0, 0);
    while row < batch.rows() {
        let end = (row + rows.max(1)).min(batch.rows());
        let tokens: usize = batch.lengths[row..end].iter().map(|&n| n as usize).sum();
        out.push(TokenBatch {
            row_ids: batch.row_ids[row..end].to_vec(),
            lengths: batch.lengths[row..end].to_vec(),
            ids: batch.ids[at..at + tokens].to_vec(),
        });
        row = end;
        at += tokens;
    }
    out
}

/// One embedding per row from its windows' (`values`: rows of `dim`, in [`WindowSpec::split`]'s order):
/// `counts[i]` windows of `lengths` tokens belong to row i. A row of several windows gets their mean weighted
/// by tokens, scaled to unit length when `normalize`; a row of one keeps its embedding as it is.
pub fn combine(values: &[f32], dim: usize, counts: &[usize], lengths: &[u32], normalize: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(counts.len() * dim);
    let mut w = 0;
    for &k in counts {
        if k == 1 {
            out.extend_from_slice(&values[w * dim..(w + 1) * dim]);
            w += 1;
            continue;
        }
        let mut sum = vec![0f64; dim];
        let mut total = 0f64;
        for j in w..w + k {
            let weight = lengths[j] as f64;
            total += weight;
            for (s, v) in sum.iter_mut().zip(&values[j * dim..(j + 1) * dim]) {
                *s += weight * *v as f64;
            }
        }
        w += k;
        let mut mean: Vec<f64> = sum.into_iter().map(|s| s / total).collect();
        if normalize {
            let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|v| *v /= norm);
        }
        out.extend(mean.into_iter().map(|v| v as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: &[&[u32]]) -> TokenBatch {
        TokenBatch {
            row_ids: (0..rows.len() as u64).map(|i| 10 + i).collect(),
            lengths: rows.iter().map(|r| r.len() as u32).collect(),
            ids: rows.iter().flat_map(|r| r.iter().copied()).collect(),
        }
    }

    #[test]
    fn long_rows_become_windows_with_their_special_tokens() {
        // [CLS]=1 ... [SEP]=2; windows of 5: the head [1], three text tokens, the tail [2].
        let w = WindowSpec::new(5, 1, 1).unwrap();
        let b = batch(&[&[1, 7, 2], &[1, 20, 21, 22, 23, 24, 25, 26, 2], &[1, 30, 31, 32, 2]]);
        assert!(w.needed(&b));
        let (out, counts) = w.split(&b);
        assert_eq!(counts, vec![1, 3, 1]);
        assert_eq!(out.row_ids, vec![10, 11, 11, 11, 12]);
        assert_eq!(out.lengths, vec![3, 5, 5, 3, 5]);
        assert_eq!(out.ids, vec![1, 7, 2, 1, 20, 21, 22, 2, 1, 23, 24, 25, 2, 1, 26, 2, 1, 30, 31, 32, 2]);
        // A prompt's tokens count in the head: each window repeats them.
        let w = WindowSpec::new(6, 3, 1).unwrap();
        let (out, counts) = w.split(&batch(&[&[1, 50, 51, 20, 21, 22, 23, 2]]));
        assert_eq!((counts, out.ids), (vec![2], vec![1, 50, 51, 20, 21, 2, 1, 50, 51, 22, 23, 2]));
        assert!(!WindowSpec::new(9, 1, 1).unwrap().needed(&b));
        assert!(WindowSpec::new(2, 1, 1).is_err());
    }

    #[test]
    fn windows_combine_as_a_token_weighted_mean() {
        // Row 0: one window, kept as it is (not normalized again); row 1: windows of 3 and 1 tokens.
        let values = [3.0, 4.0, 1.0, 0.0, 0.0, 1.0];
        let raw = combine(&values, 2, &[1, 2], &[9, 3, 1], false);
        assert_eq!(raw, vec![3.0, 4.0, 0.75, 0.25]);
        let unit = combine(&values, 2, &[1, 2], &[9, 3, 1], true);
        let n = (0.75f64.powi(2) + 0.25f64.powi(2)).sqrt();
        assert_eq!(unit, vec![3.0, 4.0, (0.75 / n) as f32, (0.25 / n) as f32]);
    }

    #[test]
    fn parts_keep_rows_whole_and_in_order() {
        let b = batch(&[&[1, 2], &[3], &[4, 5, 6]]);
        let p = parts(&b, 2);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].row_ids.clone(), p[0].ids.clone()), (vec![10, 11], vec![1, 2, 3]));
        assert_eq!((p[1].row_ids.clone(), p[1].ids.clone()), (vec![12], vec![4, 5, 6]));
    }
}
