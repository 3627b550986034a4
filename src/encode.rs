//! `chatspace-mpi encode`: the encoder alone on a JSONL of texts, for parity checks and timings where no
//! cargo is at hand (a lent GPU machine). Rows are sorted by length and cut into batches of each size asked
//! for; every batch shape is run once to warm up before the timed pass. Optionally writes the embeddings.

use std::io::Write;
use std::time::Instant;

use crate::cli::EncodeArgs;
use crate::encoder::{BackendOptions, Dtype};
use crate::model::ModelSpec;
use crate::protocol::TokenBatch;

/// One timed pass over all rows at one batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub batch_size: usize,
    pub rows: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// Share of computed tokens that are padding (0 for packed backends).
    pub padding: f64,
}

/// Runs the encoder over `args.input` at each batch size; returns the timings and the embeddings (input order)
/// of the first batch size.
pub fn run(args: &EncodeArgs) -> anyhow::Result<(Vec<Timing>, Vec<Vec<f32>>)> {
    use anyhow::Context;
    let spec = ModelSpec::load(&args.model, None).with_context(|| format!("--model {}", args.model.display()))?;
    let dtype = Dtype::parse(&args.dtype).ok_or_else(|| anyhow::anyhow!("--dtype {}: float32, float16, bfloat16 or int8", args.dtype))?;
    let layout = crate::layout::Layout::new(1, None, None, 1).map_err(anyhow::Error::msg)?;
    let gpu = crate::device::resolve(&args.device, &layout, layout.encoder(0)).map_err(anyhow::Error::msg)?;
    let threads = if args.threads > 0 { args.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let mut backend = crate::encoder::load(&spec, BackendOptions { threads, reference: false, dtype, gpu })?;
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("--input {}", args.input.display()))?;
    let mut texts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", args.input.display(), i + 1))?;
        let t = v.get(&args.text_field).and_then(|t| t.as_str());
        texts.push(t.ok_or_else(|| anyhow::anyhow!("{}:{}: no string field '{}'", args.input.display(), i + 1, args.text_field))?.to_string());
    }
    let tok = crate::tokenize::TextTokenizer::load(&spec, crate::tokenize::TokenizerChoice::Auto)?;
    let enc = tok.encode_batch(&texts, "", threads).map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    let ids: Vec<&[u32]> = (0..enc.rows()).map(|i| enc.row(i)).collect();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let dim = backend.dim();
    let (mut timings, mut first) = (Vec::new(), None);
    for &size in &args.batch_sizes {
        anyhow::ensure!(size > 0, "--batch-sizes: 0 is not a batch size");
        let batches = batches_in_order(&ids, &order, size);
        // Warm-up: every batch shape once (kernels load and tune per shape on GPUs). Its embeddings are kept
        // for the first batch size only.
        let keep = first.is_none();
        let mut vectors = vec![Vec::new(); if keep { ids.len() } else { 0 }];
        for b in &batches {
            let out = backend.embed(b)?;
            if keep {
                for (k, &row) in b.row_ids.iter().enumerate() {
                    vectors[row as usize] = out[k * dim..(k + 1) * dim].to_vec();
                }
            }
        }
        let start = Instant::now();
        for b in &batches {
            std::hint::black_box(backend.embed(b)?);
        }
        let seconds = start.elapsed().as_secs_f64();
        let tokens: usize = batches.iter().map(TokenBatch::tokens).sum();
        let computed: usize = if backend.pads() { batches.iter().map(|b| b.rows() * b.max_len()).sum() } else { tokens };
        timings.push(Timing { batch_size: size, rows: ids.len(), tokens, seconds, padding: 1.0 - tokens as f64 / computed.max(1) as f64 });
        if keep {
            first = Some(vectors);
        }
    }
    Ok((timings, first.unwrap_or_default()))
}

/// Token batches of `size` rows taken in `order` (row ids are indexes into `ids`).
pub fn batches_in_order(ids: &[&[u32]], order: &[usize], size: usize) -> Vec<TokenBatch> {
    order
        .chunks(size)
        .map(|c| TokenBatch {
            row_ids: c.iter().map(|&i| i as u64).collect(),
            lengths: c.iter().map(|&i| ids[i].len() as u32).collect(),
            ids: c.iter().flat_map(|&i| ids[i].iter().copied()).collect(),
        })
        .collect()
}

/// The subcommand: prints one line per batch size and writes `--out`.
pub fn command(args: &EncodeArgs) -> i32 {
    match run(args) {
        Ok((timings, vectors)) => {
            println!("encode: {}, {} on {}, {}", args.model.display(), args.dtype, args.device, args.input.display());
            println!("{:>6} {:>6} {:>8} {:>8} {:>10} {:>9} {:>8}", "batch", "rows", "tokens", "secs", "tokens/s", "rows/s", "padding");
            for t in &timings {
                println!(
                    "{:>6} {:>6} {:>8} {:>8.3} {:>10.0} {:>9.1} {:>7.1}%",
                    t.batch_size,
                    t.rows,
                    t.tokens,
                    t.seconds,
                    t.tokens as f64 / t.seconds,
                    t.rows as f64 / t.seconds,
                    100.0 * t.padding
                );
            }
            if let Some(path) = &args.out {
                let write = || -> std::io::Result<()> {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
                    for (i, v) in vectors.iter().enumerate() {
                        writeln!(f, "{}", serde_json::json!({ "row": i, "embedding": v }))?;
                    }
                    f.flush()
                };
                if let Err(e) = write() {
                    eprintln!("error: --out {}: {e}", path.display());
                    return crate::exit::EXIT_FAILED;
                }
            }
            crate::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::EXIT_FAILED
        }
    }
}
