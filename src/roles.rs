//! Loader and encoder roles, and what every role shares: waiting for the plan, reporting a failure to the
//! controller, and running on its own thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::batching::Bucketing;
use crate::input::{ChunkReader, TextRule};
use crate::layout::Role;

use crate::plan::{ChunkSpec, Plan};
use crate::protocol::{put, Embeddings, Endpoint, Header, TokenBatch};
use crate::tokenize::{Encoded, TextTokenizer};
use crate::transport::{Mailbox, TransportError};

/// Why a role stopped early. `message` is one line for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleError {
    pub message: String,
}

impl RoleError {
    pub fn new(message: impl Into<String>) -> Self {
        RoleError { message: message.into() }
    }

    pub fn from_display(e: impl std::fmt::Display) -> Self {
        RoleError::new(e.to_string())
    }
}

impl From<TransportError> for RoleError {
    fn from(e: TransportError) -> Self {
        RoleError::new(e.to_string())
    }
}

pub type RoleResult = Result<(), RoleError>;

/// Runs a role on its own thread. A failure (or panic) is reported to the controller before the thread ends.
pub fn spawn(role: Role, mb: Mailbox, body: impl FnOnce(&Mailbox) -> RoleResult + Send + 'static) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::Builder::new()
        .name(role.name().into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mb)))
                .unwrap_or_else(|p| Err(RoleError::new(crate::transport::panic_message(&p))));
            log::info!("{} {}: {:.2}s CPU", role.name(), mb.me, crate::walltime::thread_cpu_seconds());
            if let Err(e) = &result {
                if role != Role::Controller {
                    let _ = mb.send(0, Header::Failed { role: role.name().into(), message: e.message.clone() }, Vec::new());
                }
            }
            result.map_err(|e| e.message)
        })
        .expect("spawning a role thread")
}

/// Waits for the controller's plan; `None` if told to shut down first. Messages of other roles that arrive
/// first (a loader that got its plan sooner may already send batches) are handed out after it, in order.
pub fn wait_for_plan(mb: &Mailbox) -> Result<Option<Arc<Plan>>, RoleError> {
    let mut early = Vec::new();
    loop {
        if let Some(env) = mb.recv_timeout(Duration::from_millis(200))? {
            match env.header {
                Header::Plan(p) => {
                    early.into_iter().for_each(|e| mb.hold(e));
                    return Ok(Some(Arc::new(*p)));
                }
                Header::Shutdown { .. } => return Ok(None),
                _ => early.push(env),
            }
        }
    }
}

/// An optional fault for tests of failure handling: `CHATSPACE_FAULT=encoder-row:N` makes the encoder that
/// receives row N fail, as a model error would.
fn injected_fault_row() -> Option<u64> {
    std::env::var("CHATSPACE_FAULT").ok()?.strip_prefix("encoder-row:")?.parse().ok()
}

/// An optional pause for tests of preemption: `CHATSPACE_TEST_DELAY=writer-commit:MS` makes writers wait
/// between a shard's rename and its report to the controller (the window where a kill leaves an uncommitted
/// shard file behind); `encoder-batch:MS` makes each batch take that much longer (a slow run, to interrupt).
pub fn test_delay(point: &str) {
    let Ok(spec) = std::env::var("CHATSPACE_TEST_DELAY") else { return };
    if let Some(ms) = spec.strip_prefix(point).and_then(|r| r.strip_prefix(':')).and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

pub fn encoder(mb: &Mailbox) -> RoleResult {
    let Some(plan) = wait_for_plan(mb)? else { return Ok(()) };
    let mut backend: Box<dyn crate::encoder::Backend> = match plan.config.encoder {
        crate::cli::EncoderKind::Noop | crate::cli::EncoderKind::NoopTokenized => {
            Box::new(crate::encoder::noop::NoopBackend { dim: plan.model.output_dim() })
        }
        kind => {
            let threads = crate::layout::encoder_threads(plan.config.encoder_threads, &plan.layout);
            let gpu = crate::device::resolve(plan.config.device.as_str(), &plan.layout, mb.me).map_err(RoleError::new)?;
            let dtype = plan.config.dtype;
            let who = plan.layout.describe(mb.me);
            match gpu {
                Some(g) => log::info!(
                    "{who}: CUDA device {g} (CUDA_VISIBLE_DEVICES={}), {}",
                    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into()),
                    dtype.name()
                ),
                None => log::info!("{who}: cpu, {threads} threads, {}", dtype.name()),
            }
            let opts = crate::encoder::BackendOptions { threads, reference: kind == crate::cli::EncoderKind::Candle, dtype, gpu };
            crate::encoder::load(&plan.model, opts).map_err(|e| RoleError::new(format!("loading model {}: {e}", plan.model.path)))?
        }
    };
    let fault = injected_fault_row();
    let model_dim = backend.dim();
    // --truncate-dim: the first `dim` of each embedding are sent (sentence-transformers' truncate_dim).
    let dim = plan.output_dim().min(model_dim);
    // Batches received and not yet embedded. Everything waiting in the inbox is pulled in before each batch,
    // so a drain is seen at once rather than after the batches queued ahead of it.
    let mut queue: VecDeque<crate::protocol::Envelope> = VecDeque::new();
    let mut draining = false;
    loop {
        if queue.is_empty() {
            if let Some(env) = mb.recv_timeout(Duration::from_millis(100))? {
                queue.push_back(env);
            }
        }
        while let Some(env) = mb.try_recv()? {
            queue.push_back(env);
        }
        let mut batches = VecDeque::new();
        for env in queue.drain(..) {
            match env.header {
                Header::Shutdown { .. } => return Ok(()),
                Header::Drain => draining = true,
                Header::Batch { .. } => batches.push_back(env),
                other => return Err(RoleError::new(format!("encoder got unexpected {}", other.kind()))),
            }
        }
        let Some(env) = batches.pop_front() else { continue };
        queue = batches;
        let Header::Batch { chunk, writer, rows } = env.header else { unreachable!("only batches are queued") };
        let batch = TokenBatch::from_payload(rows as usize, &env.payload).map_err(RoleError::from_display)?;
        if draining {
            // Not started: its rows are left for the next run.
            let mut payload = Vec::new();
            put(&mut payload, &batch.row_ids);
            mb.send(writer, Header::Cut { chunk, rows }, payload)?;
            mb.send(env.from, Header::Credit { starved: false }, Vec::new())?;
            continue;
        }
        if let Some(r) = fault.filter(|r| batch.row_ids.contains(r)) {
            return Err(RoleError::new(format!("injected fault at row {r} (CHATSPACE_FAULT)")));
        }
        let started = std::time::Instant::now();
        let mut values = match plan.windows.filter(|w| w.needed(&batch)) {
            // --long-text chunk: the batch's windows, embedded a batch's worth of rows (at least 32, so that a
            // batch of one long row still fills the encoder's threads) at a time.
            Some(w) => {
                let (windows, counts) = w.split(&batch);
                let mut all = Vec::with_capacity(windows.rows() * model_dim);
                for part in crate::windows::parts(&windows, batch.rows().max(32)) {
                    all.extend(backend.embed(&part).map_err(|e| RoleError::new(format!("chunk {chunk}: {e}")))?);
                }
                crate::windows::combine(&all, model_dim, &counts, &windows.lengths, plan.model.normalize)
            }
            None => backend.embed(&batch).map_err(|e| RoleError::new(format!("chunk {chunk}: {e}")))?,
        };
        if dim < model_dim {
            values = values.chunks(model_dim).flat_map(|row| &row[..dim]).copied().collect();
        }
        test_delay("encoder-batch");
        let seconds = started.elapsed().as_secs_f64();
        // Tokens computed: the padded rectangle for backends that pad, else just the tokens.
        let padded = if backend.pads() { (batch.rows() * batch.max_len()) as u64 } else { batch.tokens() as u64 };
        let tokens = batch.tokens() as u64;
        let out = Embeddings { row_ids: batch.row_ids, dim, values };
        mb.send(writer, Header::Embedded { chunk, rows, dim: dim as u32 }, out.to_payload())?;
        // Starved: nothing else is queued here now (batches that arrived while this one ran are counted).
        while let Some(env) = mb.try_recv()? {
            queue.push_back(env);
        }
        mb.send(env.from, Header::Credit { starved: queue.is_empty() }, Vec::new())?;
        mb.send(plan.layout.controller(), Header::Progress { rows: rows as u64, tokens, padded_tokens: padded, seconds }, Vec::new())?;
    }
}

/// The most batches a loader lets one encoder hold (see [`Credits`]); `--prefetch-batches` is the start.
const MAX_PREFETCH_BATCHES: usize = 32;

/// A loader's flow control towards its encoders: each encoder holds at most `window[k]` of this loader's
/// batches (queued or running). The window starts at `--prefetch-batches` and grows by one, up to `max`,
/// each time encoder `k` ran out of queued batches while this loader had batches waiting for a credit:
/// then the round trip (credit back, next batch out) takes longer than the batches queued there, and the
/// encoder idles. Slow encoders (CPU models) keep the small start window, so a drain or the end of the
/// input never leaves much work queued at one encoder; fast ones (GPUs, the no-op encoder) get as many
/// batches queued as it takes to hide the latency. Memory: at most `max` batches per encoder per loader.
struct Credits {
    window: Vec<usize>,
    held: Vec<usize>,
    max: usize,
    next: usize,
}

impl Credits {
    fn new(encoders: usize, start: usize, max: usize) -> Credits {
        Credits { window: vec![start.max(1); encoders], held: vec![0; encoders], max, next: 0 }
    }

    /// An encoder with room for one more batch (the one with the most room, the next in turn on ties),
    /// which now holds it; `None` when every encoder's window is full.
    fn take(&mut self) -> Option<usize> {
        let n = self.window.len();
        let room = |k: usize| self.window[k] - self.held[k];
        let k = (0..n).map(|j| (self.next + j) % n).max_by_key(|&k| (room(k), std::cmp::Reverse((k + n - self.next) % n)))?;
        if room(k) == 0 {
            return None;
        }
        self.held[k] += 1;
        self.next = (k + 1) % n;
        Some(k)
    }

    /// Encoder `k` finished one of our batches; `grow` when it then had nothing queued while we had
    /// batches waiting.
    fn give_back(&mut self, k: usize, grow: bool) {
        self.held[k] = self.held[k].saturating_sub(1);
        if grow && self.window[k] < self.max {
            self.window[k] += 1;
        }
    }
}

/// Batches waiting for an encoder credit.
struct Outgoing {
    chunk: u64,
    writer: Endpoint,
    batch: TokenBatch,
}

pub fn loader(mb: &Mailbox) -> RoleResult {
    let Some(plan) = wait_for_plan(mb)? else { return Ok(()) };
    let tokenizer = match plan.config.encoder {
        crate::cli::EncoderKind::Noop => Tokens::Bytes(plan.model.max_seq_length),
        _ => {
            // --long-text chunk: whole rows (up to CHUNK_LIMIT tokens); encoders cut them into windows.
            let model = match plan.windows {
                Some(_) => crate::model::ModelSpec { max_seq_length: crate::windows::CHUNK_LIMIT, ..plan.model.clone() },
                None => plan.model.clone(),
            };
            let tok = TextTokenizer::load(&model, plan.config.tokenizer).map_err(RoleError::from_display)?;
            let threads = crate::layout::loader_threads(plan.config.loader_threads, &plan.layout, plan.config.device);
            log::info!("loader {}: tokenizer {}, {threads} threads", mb.me, tok.engine_name());
            Tokens::Model(Box::new(tok), threads)
        }
    };
    let reader = ChunkReader::new(plan.inputs.clone(), TextRule { field: plan.config.text_field.clone(), chat: plan.config.chat_format })
        .map_err(RoleError::from_display)?;
    let b = &plan.config.batching;
    let bucketing = Bucketing {
        batch_size: b.batch_size,
        tokens_per_batch: b.tokens_per_batch,
        min_tokens: b.bucket_min_tokens,
        max_tokens: b.bucket_max_tokens,
    };
    // This loader's encoders: those on its node (and on nodes without a loader), so batches stay on the node.
    let mine = plan.layout.encoders_of_loader(plan.layout.role_of(mb.me).1);
    let encoders: Vec<Endpoint> = mine.into_iter().map(|i| plan.layout.encoder(i)).collect();
    let mut credits = Credits::new(encoders.len(), b.prefetch_batches, MAX_PREFETCH_BATCHES.max(b.prefetch_batches));
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut draining = false;
    loop {
        // Hand out batches while encoders have room.
        while !queue.is_empty() {
            let Some(k) = credits.take() else { break };
            let o = queue.pop_front().expect("non-empty");
            let rows = o.batch.rows() as u32;
            mb.send(encoders[k], Header::Batch { chunk: o.chunk, writer: o.writer, rows }, o.batch.to_payload())?;
        }
        let Some(env) = mb.recv_timeout(Duration::from_millis(50))? else { continue };
        match env.header {
            Header::Shutdown { .. } => {
                log::info!("loader {}: batches in flight per encoder grew to {:?}", mb.me, credits.window);
                if let Tokens::Model(tok, threads) = &tokenizer {
                    if *threads > 1 {
                        log::info!("loader {} tokenizer threads: {:.2}s CPU", mb.me, tok.worker_cpu_seconds());
                    }
                }
                return Ok(());
            }
            Header::Credit { starved } => {
                let k = encoders.iter().position(|&e| e == env.from).ok_or_else(|| RoleError::new("credit from a non-encoder"))?;
                credits.give_back(k, starved && !queue.is_empty());
            }
            Header::Drain => {
                // Batches not yet sent will not be embedded in this run: tell each chunk's writer which rows.
                draining = true;
                let mut cut: std::collections::BTreeMap<(u64, Endpoint), Vec<u64>> = Default::default();
                for o in queue.drain(..) {
                    cut.entry((o.chunk, o.writer)).or_default().extend(o.batch.row_ids);
                }
                for ((chunk, writer), ids) in cut {
                    let mut payload = Vec::new();
                    put(&mut payload, &ids);
                    mb.send(writer, Header::Cut { chunk, rows: ids.len() as u32 }, payload)?;
                }
            }
            Header::Assign { chunk, .. } if draining => {
                mb.send(plan.layout.controller(), Header::Released { chunk: chunk.index }, Vec::new())?;
            }
            Header::Assign { chunk, todo, writer, shard } => {
                let (batches, loaded) = load_chunk(&reader, &tokenizer, &bucketing, &chunk, &todo, &plan.prompt, plan.windows)?;
                let header = Header::ChunkData { chunk: chunk.index, shard, todo, rows: loaded.rows as u32, skipped: loaded.skipped };
                mb.send(writer, header, loaded.payload)?;
                mb.send(
                    plan.layout.controller(),
                    Header::ChunkLoaded {
                        chunk: chunk.index,
                        rows: loaded.rows,
                        skipped: loaded.skipped,
                        tokens: loaded.tokens,
                        truncated: loaded.truncated,
                        lengths: loaded.lengths,
                    },
                    Vec::new(),
                )?;
                queue.extend(batches.into_iter().map(|batch| Outgoing { chunk: chunk.index, writer, batch }));
            }
            other => return Err(RoleError::new(format!("loader got unexpected {}", other.kind()))),
        }
    }
}

struct Loaded {
    rows: u64,
    skipped: u64,
    tokens: u64,
    truncated: u64,
    /// Rows per length bin.
    lengths: Vec<u64>,
    /// ChunkData payload: row ids then the Arrow IPC stream of the columns.
    payload: Vec<u8>,
}

/// How the loader turns text into token ids.
enum Tokens {
    /// The model's tokenizer, on this many threads.
    Model(Box<TextTokenizer>, usize),
    /// One id per byte, at most this many: for the no-op encoder, which ignores ids, so that plumbing
    /// benchmarks measure loading, MPI and writing rather than the tokenizer (`--encoder noop-tokenized`
    /// measures the tokenizer too).
    Bytes(usize),
}

impl Tokens {
    fn encode(&self, texts: &[String], prompt: &str) -> Result<Encoded, String> {
        match self {
            Tokens::Model(tokenizer, threads) => tokenizer.encode_batch(texts, prompt, *threads),
            Tokens::Bytes(max) => {
                let mut e = Encoded { ids: Vec::new(), starts: vec![0], truncated: 0 };
                for t in texts {
                    let before = e.ids.len();
                    e.ids.extend(prompt.bytes().chain(t.bytes()).take((*max).max(1)).map(u32::from));
                    if e.ids.len() == before {
                        e.ids.push(0);
                    }
                    e.starts.push(e.ids.len());
                }
                Ok(e)
            }
        }
    }
}

/// Reads, tokenizes and batches one chunk.
fn load_chunk(
    reader: &ChunkReader,
    tokenizer: &Tokens,
    bucketing: &Bucketing,
    chunk: &ChunkSpec,
    todo: &[(u64, u64)],
    prompt: &str,
    windows: Option<crate::windows::WindowSpec>,
) -> Result<(Vec<TokenBatch>, Loaded), RoleError> {
    let rows = reader.read(todo).map_err(RoleError::from_display)?;
    let encodings = tokenizer
        .encode(&rows.texts, prompt)
        .map_err(|e| RoleError::new(format!("tokenizing chunk {} (rows {}..{}): {e}", chunk.index, chunk.start, chunk.end)))?;
    let lengths: Vec<usize> = (0..encodings.rows()).map(|i| encodings.len_of(i)).collect();
    let batches = bucketing
        .plan(&lengths)
        .into_iter()
        .map(|idx| {
            let mut b = TokenBatch { row_ids: Vec::with_capacity(idx.len()), lengths: Vec::with_capacity(idx.len()), ids: Vec::new() };
            for i in idx {
                b.row_ids.push(rows.row_ids[i]);
                b.lengths.push(lengths[i] as u32);
                b.ids.extend_from_slice(encodings.row(i));
            }
            b
        })
        .collect();
    let mut payload = Vec::new();
    put(&mut payload, &rows.row_ids);
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut payload, &rows.columns.schema()).map_err(RoleError::from_display)?;
        w.write(&rows.columns).map_err(RoleError::from_display)?;
        w.finish().map_err(RoleError::from_display)?;
    }
    let mut bins = Vec::new();
    for &n in &lengths {
        let b = crate::tokenize::length_bin(n);
        if bins.len() <= b {
            bins.resize(b + 1, 0);
        }
        bins[b] += 1;
    }
    // Rows past the model's max length: cut by the tokenizer, or (--long-text chunk) whole, for windows.
    let truncated = match windows {
        Some(w) => lengths.iter().filter(|&&n| n > w.max_len).count() as u64,
        None => encodings.truncated,
    };
    let loaded = Loaded {
        rows: rows.row_ids.len() as u64,
        skipped: rows.skipped,
        tokens: lengths.iter().sum::<usize>() as u64,
        truncated,
        lengths: bins,
        payload,
    };
    Ok((batches, loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_fill_encoders_in_turn_up_to_their_window() {
        let mut c = Credits::new(3, 2, 4);
        let order: Vec<usize> = std::iter::from_fn(|| c.take()).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2], "two each, round robin");
        assert_eq!(c.take(), None);
        c.give_back(1, false);
        assert_eq!(c.take(), Some(1));
        assert_eq!(c.take(), None);
    }

    #[test]
    fn a_starved_encoder_gets_a_larger_window_up_to_the_max() {
        let mut c = Credits::new(2, 2, 3);
        while c.take().is_some() {}
        c.give_back(0, true);
        assert_eq!(c.window, vec![3, 2]);
        assert_eq!((c.take(), c.take(), c.take()), (Some(0), Some(0), None), "room for two more at encoder 0");
        c.give_back(0, true);
        c.give_back(0, true);
        assert_eq!(c.window, vec![3, 2], "capped at max");
        c.give_back(1, false);
        assert_eq!(c.window[1], 2, "not starved: no growth");
        // Credits returned beyond what was taken (a bug elsewhere) do not underflow.
        let mut d = Credits::new(1, 1, 1);
        d.give_back(0, false);
        assert_eq!(d.take(), Some(0));
    }
}
