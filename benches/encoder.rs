//! Encoder alone (no MPI, no I/O): tokens/s and rows/s of the model on a fixed real-text input, batches of
//! 32 rows, sorted by length (as the pipeline batches) and in input order, with the share of computed tokens
//! that are padding (none for the packed CPU backend). Backends: this crate's CPU BERT with all cores and with
//! 1 thread, its bfloat16 (AVX512_BF16 CPUs) and int8 (AVX512-VNNI CPUs) modes, and candle's BertModel; for
//! other architectures (MPNet, Qwen3), whatever of those the encoders' rule table runs.
//!
//!   cargo bench --bench encoder [-- MODEL_DIR [JSONL [BATCH]]]
//!   BENCH_BACKENDS=cpu,cpu1,bf16,candle (default) picks the backends; BENCH_THREADS=N sets "cpu"'s threads.

use std::time::Instant;

use chatspace_mpi::encoder::{self, BackendOptions, Dtype};
use chatspace_mpi::model::ModelSpec;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let model = args.first().cloned().unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let input = args.get(1).cloned().unwrap_or_else(|| "data/sample.jsonl".into());
    let batch_size: usize = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(32);
    let spec = ModelSpec::load(std::path::Path::new(&model), None).expect("model folder (run scripts/fetch-model.sh)");
    let tok = spec.tokenizer().expect("tokenizer");
    let texts: Vec<String> = std::fs::read_to_string(&input)
        .expect("input")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("text")?.as_str().map(String::from))
        .filter(|t| !t.trim().is_empty())
        .collect();
    let enc = tok.encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true).expect("tokenize");
    let ids: Vec<&[u32]> = enc.iter().map(|e| e.get_ids()).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(cores);
    let wanted = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "cpu,cpu1,bf16,int8,candle".into());
    println!("encoder bench: {model}, {} rows of {input}, batch {batch_size}, {cores} cores", ids.len());
    println!("{:<18} {:<9} {:>6} {:>8} {:>8} {:>10} {:>9} {:>8}", "backend", "order", "rows", "tokens", "secs", "tokens/s", "rows/s", "padding");
    for which in wanted.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (name, opts) = match which {
            "cpu" => (format!("cpu ({threads} threads)"), BackendOptions::cpu(threads)),
            "cpu1" => ("cpu (1 thread)".to_string(), BackendOptions::cpu(1)),
            "bf16" => (format!("cpu bf16 ({threads} t)"), BackendOptions { dtype: Dtype::Bf16, ..BackendOptions::cpu(threads) }),
            "int8" => (format!("cpu int8 ({threads} t)"), BackendOptions { dtype: Dtype::Int8, ..BackendOptions::cpu(threads) }),
            "candle" => ("candle (reference)".to_string(), BackendOptions { reference: true, ..BackendOptions::cpu(1) }),
            other => panic!("BENCH_BACKENDS: unknown backend {other} (cpu, cpu1, bf16, int8, candle)"),
        };
        // What the encoders' rule table or this CPU refuses (bfloat16 without AVX512_BF16, int8 for MPNet, ...)
        // is a line, not a failure.
        let mut backend = match encoder::load(&spec, opts) {
            Ok(b) => b,
            Err(e) => {
                println!("({name}: {e})");
                continue;
            }
        };
        // candle pads every batch, so its input-order pass is slow and says little: it runs sorted only.
        let orders: &[bool] = if which == "candle" { &[true] } else { &[true, false] };
        // The packed CPU BERT computes no padding; the candle backends compute the batch's padded rectangle.
        let packed = !backend.pads();
        for &sorted in orders {
            let mut order: Vec<usize> = (0..ids.len()).collect();
            if sorted {
                order.sort_by_key(|&i| ids[i].len());
            }
            let batches = chatspace_mpi::encode::batches_in_order(&ids, &order, batch_size);
            backend.embed(&batches[0]).expect("warm-up");
            let (tokens, padded): (usize, usize) = batches.iter().fold((0, 0), |(t, p), b| (t + b.tokens(), p + b.rows() * b.max_len()));
            let start = Instant::now();
            for b in &batches {
                std::hint::black_box(backend.embed(b).expect("embed"));
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{:<18} {:<9} {:>6} {:>8} {:>8.2} {:>10.0} {:>9.1} {:>7.1}%",
                name,
                if sorted { "sorted" } else { "unsorted" },
                ids.len(),
                tokens,
                secs,
                tokens as f64 / secs,
                ids.len() as f64 / secs,
                if packed { 0.0 } else { 100.0 * (padded - tokens) as f64 / padded as f64 }
            );
        }
    }
}
