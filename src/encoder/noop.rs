//! The placeholder encoder (`--encoder noop` and `noop-tokenized`): vectors without a model, for measuring
//! the pipeline around it.

use crate::encoder::contract::{Backend, EncoderError, TokenBatch};

/// Placeholder vectors without running a model, for measuring the pipeline around the encoder. Values are a
/// cheap hash of the row id, length and first tokens (random mantissas, so shards compress like real floats),
/// normalized like real embeddings.
pub struct NoopBackend {
    pub dim: usize,
}

impl Backend for NoopBackend {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, batch: &TokenBatch) -> Result<Vec<f32>, EncoderError> {
        let mut out = Vec::with_capacity(batch.rows() * self.dim);
        let mut at = 0;
        for (&n, &row) in batch.lengths.iter().zip(&batch.row_ids) {
            // A vector of the row id, the length and the first 64 token ids: rows with the same text get
            // different vectors (as real data would: no long repeats that compress away), runs with any
            // layout the same ones.
            let ids = &batch.ids[at..at + n as usize];
            let seed =
                ids.iter().take(64).fold(row.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n as u64, |h, &t| (h ^ t as u64).wrapping_mul(0x100_0000_01b3));
            at += n as usize;
            let start = out.len();
            // 32 random bits per element (wyrand): random sign and mantissa, and a magnitude that halves with
            // probability 1/2 per step from [1/16, 1/8), like the entries of a normalized 384-dim embedding:
            // such vectors compress like real ones (~85% of their size under byte-stream-split + zstd).
            let mut state = seed;
            for _ in 0..self.dim.div_ceil(2) {
                state = state.wrapping_add(0xa076_1d64_78bd_642f);
                let t = (state as u128) * ((state ^ 0xe703_7ed1_a0b4_28db) as u128);
                let r = (t >> 64) as u64 ^ t as u64;
                for half in [r as u32, (r >> 32) as u32] {
                    let halvings = ((half >> 23) & 0xff | 0x100).trailing_zeros();
                    out.push(f32::from_bits((half & 0x807f_ffff) | ((0x7b - halvings) << 23)));
                }
            }
            out.truncate(start + self.dim);
            let row = &mut out[start..];
            let scale = 1.0 / crate::encoder::kernels::norm(row).max(1e-12);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noop_vectors_are_unit_length_and_depend_on_row_and_tokens() {
        let mut b = NoopBackend { dim: 7 };
        let batch = TokenBatch { row_ids: vec![0, 1, 2], lengths: vec![2, 2, 1], ids: vec![5, 6, 5, 6, 7] };
        let v = b.embed(&batch).unwrap();
        assert_eq!(v.len(), 21);
        assert_ne!(&v[0..7], &v[7..14], "same tokens, another row");
        assert_ne!(&v[0..7], &v[14..21]);
        for row in v.chunks(7) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // The same row in another batch gets the same vector.
        let again = b.embed(&TokenBatch { row_ids: vec![1], lengths: vec![2], ids: vec![5, 6] }).unwrap();
        assert_eq!(&again[..], &v[7..14]);
    }
}
