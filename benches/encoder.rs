//! Encoder alone (no MPI, no I/O): tokens/s and rows/s of the model on a fixed real-text input, batches of
//! 32 rows, sorted by length (as the pipeline batches) and in input order, with the padding each computes.
//!
//!   cargo bench --bench encoder [-- MODEL_DIR [JSONL [BATCH]]]

use std::time::Instant;

use chatspace_mpi::model::{Backend, ModelSpec};
use chatspace_mpi::protocol::TokenBatch;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let model = args.first().cloned().unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let input = args.get(1).cloned().unwrap_or_else(|| "data/sample.jsonl".into());
    let batch_size: usize = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(32);
    let spec = ModelSpec::load(std::path::Path::new(&model), None).expect("model folder (run scripts/fetch-model.sh)");
    let tok = spec.tokenizer().expect("tokenizer");
    let mut backend = spec.backend().expect("model");
    let texts: Vec<String> = std::fs::read_to_string(&input)
        .expect("input")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("text")?.as_str().map(String::from))
        .filter(|t| !t.trim().is_empty())
        .collect();
    let enc = tok.encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true).expect("tokenize");
    let ids: Vec<&[u32]> = enc.iter().map(|e| e.get_ids()).collect();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!("encoder bench: {model}, {} rows of {input}, batch {batch_size}, threads {threads}", ids.len());
    println!("{:<10} {:>6} {:>8} {:>8} {:>10} {:>9} {:>8}", "order", "rows", "tokens", "secs", "tokens/s", "rows/s", "padding");
    for sorted in [true, false] {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        if sorted {
            order.sort_by_key(|&i| ids[i].len());
        }
        let batches: Vec<TokenBatch> = order
            .chunks(batch_size)
            .map(|c| TokenBatch {
                row_ids: c.iter().map(|&i| i as u64).collect(),
                lengths: c.iter().map(|&i| ids[i].len() as u32).collect(),
                ids: c.iter().flat_map(|&i| ids[i].iter().copied()).collect(),
            })
            .collect();
        backend.embed(&batches[0]).expect("warm-up");
        let (tokens, padded): (usize, usize) = batches.iter().fold((0, 0), |(t, p), b| (t + b.tokens(), p + b.rows() * b.max_len()));
        let start = Instant::now();
        for b in &batches {
            std::hint::black_box(backend.embed(b).expect("embed"));
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<10} {:>6} {:>8} {:>8.2} {:>10.0} {:>9.1} {:>7.1}%",
            if sorted { "sorted" } else { "unsorted" },
            ids.len(),
            tokens,
            secs,
            tokens as f64 / secs,
            ids.len() as f64 / secs,
            100.0 * (padded - tokens) as f64 / padded as f64
        );
    }
}
