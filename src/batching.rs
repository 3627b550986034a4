//! Token-length bucketing: turns the tokenized rows of a chunk into batches with little padding.
//!
//! Rows are sorted by length. A row's bucket is `min(max(min_tokens, next_pow2(len)), max_tokens)`; a batch
//! holds rows of one bucket, at most `batch_size` rows, or `tokens_per_batch / bucket` rows when a token
//! budget is given. Batches are padded to their longest row, not to the bucket.

/// Batching limits (from the `--batch-size`, `--tokens-per-batch`, `--bucket-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct Bucketing {
    pub batch_size: usize,
    pub tokens_per_batch: Option<usize>,
    pub min_tokens: usize,
    pub max_tokens: usize,
}

impl Bucketing {
    pub fn bucket(&self, len: usize) -> usize {
        len.max(1).next_power_of_two().max(self.min_tokens).min(self.max_tokens)
    }

    pub fn rows_per_batch(&self, bucket: usize) -> usize {
        match self.tokens_per_batch {
            Some(t) => (t / bucket.max(1)).max(1),
            None => self.batch_size,
        }
    }

    /// Groups row indices (into `lengths`) into batches; every index appears exactly once.
    pub fn plan(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| (lengths[i], i));
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut current_bucket = 0;
        for i in order {
            let b = self.bucket(lengths[i]);
            if !current.is_empty() && (b != current_bucket || current.len() >= self.rows_per_batch(current_bucket)) {
                batches.push(std::mem::take(&mut current));
            }
            current_bucket = b;
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// Padding waste of a batch plan: (real tokens, padded tokens computed).
pub fn padding_stats(lengths: &[usize], batches: &[Vec<usize>]) -> (usize, usize) {
    let real = lengths.iter().sum();
    let padded = batches.iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0)).sum();
    (real, padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bucketing = Bucketing { batch_size: 3, tokens_per_batch: None, min_tokens: 4, max_tokens: 64 };

    #[test]
    fn buckets_are_clamped_powers_of_two() {
        assert_eq!(B.bucket(1), 4);
        assert_eq!(B.bucket(5), 8);
        assert_eq!(B.bucket(8), 8);
        assert_eq!(B.bucket(1000), 64);
    }

    #[test]
    fn every_row_once_and_batches_respect_limits() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 90 + 1).collect();
        for b in [B, Bucketing { tokens_per_batch: Some(128), ..B }] {
            let batches = b.plan(&lengths);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..100).collect::<Vec<_>>());
            for batch in &batches {
                let bucket = b.bucket(lengths[batch[0]]);
                assert!(batch.iter().all(|&i| b.bucket(lengths[i]) == bucket));
                assert!(batch.len() <= b.rows_per_batch(bucket));
            }
        }
    }

    #[test]
    fn sorting_keeps_padding_small() {
        let lengths: Vec<usize> = (0..256).map(|i| (i * 7919) % 200 + 1).collect();
        let batches = Bucketing { batch_size: 32, ..B }.plan(&lengths);
        let (real, padded) = padding_stats(&lengths, &batches);
        let unsorted: Vec<Vec<usize>> = (0..256).collect::<Vec<_>>().chunks(32).map(|c| c.to_vec()).collect();
        let (_, padded_unsorted) = padding_stats(&lengths, &unsorted);
        let waste = |p: usize| (p - real) as f64 / p as f64;
        assert!(waste(padded) < 0.2 && waste(padded) * 3.0 < waste(padded_unsorted), "{real} {padded} {padded_unsorted}");
    }

    #[test]
    fn token_budget_limits_rows() {
        let b = Bucketing { tokens_per_batch: Some(100), ..B };
        assert_eq!(b.rows_per_batch(32), 3);
        assert_eq!(b.rows_per_batch(64), 1);
        assert!(b.plan(&[]).is_empty());
    }
}
