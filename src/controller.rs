//! Controller (rank 0): builds the plan, hands chunks to loaders, commits shards to the manifest, reports
//! progress and failures. Its decisions are a plain state machine ([`Scheduler`]: events in, actions out);
//! [`run`] does the I/O around it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::EmbedArgs;
use crate::layout::Layout;
use crate::manifest::{now_rfc3339, Manifest, Preprocessing, RunRecord, ShardEntry, Source, SourceFile, Status, MANIFEST_VERSION, TOOL};
use crate::model::ModelSpec;
use crate::output::{dataset_name, ensure_writable, OutputPaths};
use crate::plan::{discover, scan_inputs, Plan};
use crate::protocol::{Endpoint, Header};
use crate::roles::{RoleError, RoleResult};
use crate::transport::Mailbox;

/// Set when the controller failed after work started: the launcher then aborts every rank (MPI_Abort),
/// since a rank may be mid-batch. Failures before the plan is sent shut ranks down cleanly instead.
pub static NEEDS_ABORT: AtomicBool = AtomicBool::new(false);

/// Chunks a loader may have assigned and not yet committed (bounds memory: each chunk's rows, texts and
/// embeddings are held until its shard is written).
pub const CHUNKS_IN_FLIGHT_PER_LOADER: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    ShardWritten(ShardEntry),
    Failed { from: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Assign { loader: usize, chunk: u64, writer: usize },
    Commit(ShardEntry),
    Finish,
    Fail(String),
}

/// Which chunk goes where, and when the run is over.
#[derive(Debug)]
pub struct Scheduler {
    pending: VecDeque<u64>,
    loaders_inflight: Vec<usize>,
    owner: HashMap<u64, usize>,
    writers: usize,
    cap: usize,
    committed: BTreeSet<u64>,
    total: usize,
    done: bool,
}

impl Scheduler {
    pub fn new(chunks: impl IntoIterator<Item = u64>, loaders: usize, writers: usize, cap: usize) -> Self {
        let pending: VecDeque<u64> = chunks.into_iter().collect();
        let total = pending.len();
        Scheduler { pending, loaders_inflight: vec![0; loaders], owner: HashMap::new(), writers, cap, committed: BTreeSet::new(), total, done: false }
    }

    pub fn committed(&self) -> usize {
        self.committed.len()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match event {
            Event::Start => {}
            Event::ShardWritten(entry) => {
                let Some(loader) = self.owner.remove(&entry.shard_index) else {
                    self.done = true;
                    return vec![Action::Fail(format!("shard {} reported but not in flight (this is a bug)", entry.shard_index))];
                };
                self.loaders_inflight[loader] -= 1;
                self.committed.insert(entry.shard_index);
                actions.push(Action::Commit(entry));
            }
            Event::Failed { from, message } => {
                self.done = true;
                return vec![Action::Fail(format!("{from}: {message}"))];
            }
        }
        // Fill every loader up to its cap, least loaded first.
        while !self.pending.is_empty() {
            let (loader, &n) = self.loaders_inflight.iter().enumerate().min_by_key(|(_, n)| **n).expect("at least one loader");
            if n >= self.cap {
                break;
            }
            let chunk = self.pending.pop_front().expect("non-empty");
            self.loaders_inflight[loader] += 1;
            self.owner.insert(chunk, loader);
            actions.push(Action::Assign { loader, chunk, writer: (chunk as usize) % self.writers });
        }
        if self.committed.len() == self.total {
            self.done = true;
            actions.push(Action::Finish);
        }
        actions
    }
}

/// Builds the plan from the flags, checking inputs, model and output; errors are one line for the user.
pub fn build_plan(args: &EmbedArgs, layout: &Layout) -> anyhow::Result<Plan> {
    use anyhow::Context;
    args.validate().map_err(anyhow::Error::msg)?;
    if args.resume {
        anyhow::bail!("--resume: resuming from a manifest is not supported by this version yet");
    }
    let model = ModelSpec::load(&args.model, args.model_name.as_deref())?;
    let files = discover(&args.dataset)?;
    if files.iter().any(|(_, f)| *f != files[0].1) {
        anyhow::bail!("--dataset {}: mixes Parquet and JSONL files; use one format", args.dataset);
    }
    let (inputs, rows_total) = scan_inputs(&files, &args.text_field, args.rows_per_shard, args.max_rows)?;
    if rows_total == 0 {
        anyhow::bail!("--dataset {}: no rows to embed", args.dataset);
    }
    let dataset = args.dataset_name.clone().unwrap_or_else(|| dataset_name(&args.dataset));
    let output = OutputPaths::new(&args.output_root, &model.name, &dataset, args.subset.as_deref(), &args.split);
    ensure_writable(&args.output_root).with_context(|| format!("--output-root {} is not writable", args.output_root.display()))?;
    let existing = output.manifest.exists() || std::fs::read_dir(&output.shard_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if existing {
        if !args.overwrite {
            anyhow::bail!(
                "output already exists: {} (pass --resume to continue it or --overwrite to replace it)",
                output.manifest.display()
            );
        }
        for p in [&output.manifest, &output.run_summary] {
            if p.exists() {
                std::fs::remove_file(p).with_context(|| format!("--overwrite: removing {}", p.display()))?;
            }
        }
        if output.shard_dir.exists() {
            std::fs::remove_dir_all(&output.shard_dir).with_context(|| format!("--overwrite: removing {}", output.shard_dir.display()))?;
        }
    }
    for d in [&output.shard_dir, output.manifest.parent().expect("manifest has a folder")] {
        ensure_writable(d).with_context(|| format!("--output-root: cannot write {}", d.display()))?;
    }
    let created_at = now_rfc3339();
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("run-{}", created_at.replace([':', '.'], "-")));
    Ok(Plan { args: args.clone(), layout: layout.clone(), inputs, rows_total, model, output, run_id, created_at })
}

fn new_manifest(plan: &Plan) -> Manifest {
    let dataset = plan.args.dataset_name.clone().unwrap_or_else(|| dataset_name(&plan.args.dataset));
    Manifest {
        version: MANIFEST_VERSION,
        status: Status::Running,
        dataset,
        subset: plan.args.subset.clone(),
        split: plan.args.split.clone(),
        model: plan.model.name.clone(),
        model_info: plan.model.clone(),
        source: Source {
            kind: "local".into(),
            files: plan.inputs.iter().map(|f| SourceFile { path: f.path.clone(), rows: f.rows, bytes: f.bytes }).collect(),
        },
        rows_total: plan.rows_total,
        rows_embedded: 0,
        rows_skipped: 0,
        embedding_dim: plan.model.dim,
        rows_per_shard: plan.args.rows_per_shard,
        shards: Vec::new(),
        created_at: plan.created_at.clone(),
        updated_at: plan.created_at.clone(),
        run_id: plan.run_id.clone(),
        min_norm: None,
        max_norm: None,
        preprocessing: Preprocessing {
            text_field: plan.args.text_field.clone(),
            extract_first_assistant: plan.args.extract_first_assistant,
            max_seq_length: plan.model.max_seq_length,
            pooling: plan.model.pooling,
            normalize: plan.model.normalize,
            dtype: plan.args.dtype.clone(),
        },
        run_config: plan.args.clone(),
        runs: vec![RunRecord {
            run_id: plan.run_id.clone(),
            started_at: plan.created_at.clone(),
            ended_at: None,
            world_size: plan.layout.world_size,
            layout: plan.layout.summary(),
            exit: None,
        }],
        error: None,
        tool: TOOL.into(),
    }
}

/// Rates and ETA for the progress display.
struct Progress {
    start: Instant,
    last: Instant,
    total: u64,
    rows: u64,
    skipped: u64,
    tokens: u64,
    padded: u64,
    enabled: bool,
    tty: bool,
    interval: Duration,
}

impl Progress {
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let done = self.rows + self.skipped;
        let rate = self.rows as f64 / secs;
        let eta = if rate > 0.0 { format!("{:.0}s", (self.total.saturating_sub(done)) as f64 / ((done as f64) / secs)) } else { "?".into() };
        format!(
            "{done}/{} rows ({:.1}%), {rate:.1} rows/s, {:.0} tokens/s, ETA {eta}",
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64,
            self.tokens as f64 / secs
        )
    }

    fn tick(&mut self, force: bool) {
        if !self.enabled {
            return;
        }
        let every = if self.tty { Duration::from_millis(500) } else { self.interval };
        if force || self.last.elapsed() >= every {
            self.last = Instant::now();
            if self.tty {
                eprint!("\r\x1b[2K{}", self.line());
            } else {
                eprintln!("progress: {}", self.line());
            }
        }
    }

    fn end_line(&self) {
        if self.enabled && self.tty {
            eprintln!();
        }
    }
}

fn broadcast(mb: &Mailbox, layout: &Layout, header: &Header, payload: &[u8]) -> RoleResult {
    for e in 1..layout.endpoints() as Endpoint {
        mb.send(e, header.clone(), payload.to_vec())?;
    }
    Ok(())
}

fn write_summary(plan: &Plan, m: &Manifest, secs: f64) {
    let summary = serde_json::json!({
        "dataset": m.dataset, "subset": m.subset, "split": m.split, "model": m.model,
        "created_at": m.created_at, "run_id": m.run_id, "status": m.status, "duration_seconds": secs,
        "rows_total": m.rows_total, "rows_embedded": m.rows_embedded, "rows_skipped": m.rows_skipped,
        "num_shards": m.shards.len(), "embedding_dim": m.embedding_dim, "git_sha": option_env!("CHATSPACE_GIT_SHA"),
        "manifest_path": plan.output.manifest, "min_norm": m.min_norm, "max_norm": m.max_norm,
        "tool_version": TOOL, "world_size": plan.layout.world_size, "layout": plan.layout.summary(), "error": m.error,
    });
    let mut bytes = serde_json::to_vec_pretty(&summary).expect("summary serializes");
    bytes.push(b'\n');
    if let Err(e) = crate::output::write_atomic(&plan.output.run_summary, &bytes) {
        eprintln!("warning: cannot write {}: {e}", plan.output.run_summary.display());
    }
}

/// The controller role.
pub fn run(mb: &Mailbox, args: &EmbedArgs, layout: &Layout) -> RoleResult {
    let plan = match build_plan(args, layout) {
        Ok(p) => p,
        Err(e) => {
            let _ = broadcast(mb, layout, &Header::Shutdown, &[]);
            return Err(RoleError::new(format!("{e:#}")));
        }
    };
    log::info!("layout: {}", layout.summary());
    broadcast(mb, layout, &Header::Plan(Box::new(plan.clone())), &[])?;
    NEEDS_ABORT.store(layout.world_size > 1, Ordering::SeqCst);
    let mut manifest = new_manifest(&plan);
    let manifest_path = plan.output.manifest.clone();
    let write_manifest = |m: &mut Manifest| m.write(&manifest_path).map_err(|e| RoleError::new(format!("{}: {e}", manifest_path.display())));
    write_manifest(&mut manifest)?;
    let mut sched = Scheduler::new(0..plan.chunk_count(), layout.loaders, layout.writers, CHUNKS_IN_FLIGHT_PER_LOADER);
    let mut progress = Progress {
        start: Instant::now(),
        last: Instant::now(),
        total: plan.rows_total,
        rows: 0,
        skipped: 0,
        tokens: 0,
        padded: 0,
        enabled: !args.no_progress,
        tty: std::io::stderr().is_terminal(),
        interval: Duration::from_secs_f64(args.progress_interval),
    };
    let mut events = VecDeque::from([Event::Start]);
    loop {
        while let Some(ev) = events.pop_front() {
            for action in sched.handle(ev) {
                match action {
                    Action::Assign { loader, chunk, writer } => {
                        let header = Header::Assign { chunk: plan.chunk(chunk), writer: layout.writer(writer) };
                        mb.send(layout.loader(loader), header, Vec::new())?;
                    }
                    Action::Commit(entry) => {
                        manifest.add_shard(entry);
                        write_manifest(&mut manifest)?;
                    }
                    Action::Finish => {
                        manifest.status = Status::Complete;
                        finish_run(&mut manifest, "complete");
                        write_manifest(&mut manifest)?;
                        let secs = progress.start.elapsed().as_secs_f64();
                        write_summary(&plan, &manifest, secs);
                        progress.tick(true);
                        progress.end_line();
                        let waste = 100.0 * (1.0 - progress.tokens as f64 / progress.padded.max(1) as f64);
                        eprintln!(
                            "done: {} rows embedded, {} skipped, {} shards in {secs:.1}s ({:.1} rows/s, {:.0} tokens/s, {waste:.1}% padding); manifest {}",
                            manifest.rows_embedded,
                            manifest.rows_skipped,
                            manifest.shards.len(),
                            manifest.rows_embedded as f64 / secs.max(1e-9),
                            progress.tokens as f64 / secs.max(1e-9),
                            manifest_path.display()
                        );
                        broadcast(mb, layout, &Header::Shutdown, &[])?;
                        NEEDS_ABORT.store(false, Ordering::SeqCst);
                        return Ok(());
                    }
                    Action::Fail(message) => {
                        progress.end_line();
                        manifest.status = Status::Failed;
                        manifest.error = Some(message.clone());
                        finish_run(&mut manifest, "failed");
                        if let Err(e) = write_manifest(&mut manifest) {
                            eprintln!("warning: {}", e.message);
                        }
                        write_summary(&plan, &manifest, progress.start.elapsed().as_secs_f64());
                        let _ = broadcast(mb, layout, &Header::Shutdown, &[]);
                        return Err(RoleError::new(message));
                    }
                }
            }
        }
        progress.tick(false);
        let Some(env) = mb.recv_timeout(Duration::from_millis(100))? else { continue };
        match env.header {
            Header::Progress { rows, tokens, padded_tokens } => {
                progress.rows += rows;
                progress.tokens += tokens;
                progress.padded += padded_tokens;
            }
            Header::ChunkLoaded { skipped, .. } => progress.skipped += skipped,
            Header::ShardWritten(entry) => events.push_back(Event::ShardWritten(*entry)),
            Header::Failed { role: _, message } => events.push_back(Event::Failed { from: layout.describe(env.from), message }),
            other => events.push_back(Event::Failed { from: "controller".into(), message: format!("unexpected {} message (this is a bug)", other.kind()) }),
        }
    }
}

fn finish_run(m: &mut Manifest, exit: &str) {
    if let Some(r) = m.runs.last_mut() {
        r.ended_at = Some(now_rfc3339());
        r.exit = Some(exit.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> ShardEntry {
        let mut m = crate::manifest::tests_support::empty_manifest();
        m.shards.clear();
        ShardEntry {
            path: format!("s{i}"),
            shard_index: i,
            rows: 1,
            rows_skipped: 0,
            row_start: i,
            row_end: i + 1,
            bytes: 0,
            sha256: String::new(),
            embedding_dim: 4,
            min_norm: None,
            max_norm: None,
            created_at: String::new(),
            tool: m.tool,
        }
    }

    fn assigns(actions: &[Action]) -> Vec<(usize, u64, usize)> {
        actions.iter().filter_map(|a| if let Action::Assign { loader, chunk, writer } = a { Some((*loader, *chunk, *writer)) } else { None }).collect()
    }

    #[test]
    fn start_fills_loaders_up_to_the_cap() {
        let mut s = Scheduler::new(0..10, 2, 3, 2);
        let a = assigns(&s.handle(Event::Start));
        assert_eq!(a, vec![(0, 0, 0), (1, 1, 1), (0, 2, 2), (1, 3, 0)]);
    }

    #[test]
    fn each_commit_frees_a_slot_and_the_last_one_finishes() {
        let mut s = Scheduler::new(0..3, 1, 1, 2);
        assert_eq!(assigns(&s.handle(Event::Start)).len(), 2);
        let a = s.handle(Event::ShardWritten(entry(1)));
        assert_eq!(a[0], Action::Commit(entry(1)));
        assert_eq!(assigns(&a), vec![(0, 2, 0)]);
        assert!(!a.contains(&Action::Finish));
        s.handle(Event::ShardWritten(entry(0)));
        let a = s.handle(Event::ShardWritten(entry(2)));
        assert_eq!(a, vec![Action::Commit(entry(2)), Action::Finish]);
        assert_eq!(s.committed(), 3);
        assert!(s.handle(Event::Start).is_empty(), "a finished scheduler does nothing");
    }

    #[test]
    fn unknown_or_duplicate_shards_and_failures_stop_the_run() {
        let mut s = Scheduler::new(0..2, 1, 1, 1);
        s.handle(Event::Start);
        assert!(matches!(s.handle(Event::ShardWritten(entry(1)))[0], Action::Fail(_)));
        let mut s = Scheduler::new(0..2, 1, 1, 1);
        s.handle(Event::Start);
        let a = s.handle(Event::Failed { from: "rank 2 (encoder 0)".into(), message: "boom".into() });
        assert_eq!(a, vec![Action::Fail("rank 2 (encoder 0): boom".into())]);
        assert!(s.handle(Event::ShardWritten(entry(0))).is_empty());
    }

    #[test]
    fn empty_plan_finishes_at_once() {
        let mut s = Scheduler::new(0..0, 1, 1, 1);
        assert_eq!(s.handle(Event::Start), vec![Action::Finish]);
    }
}
