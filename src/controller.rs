//! Controller (rank 0): builds the plan (or resumes one from its manifest), drives the [`Scheduler`], commits
//! shards to the manifest, reports progress, and turns signals into a drain and failures into one error line.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::cli::EmbedArgs;
use crate::layout::Layout;
use crate::manifest::{now_rfc3339, Fingerprint, Manifest, Preprocessing, RunRecord, Source, SourceFile, Status, MANIFEST_VERSION, TOOL};
use crate::model::ModelSpec;
use crate::output::{dataset_name, ensure_writable, resolve_shard_path, OutputPaths};
use crate::plan::{discover, scan_inputs, DatasetSource, Plan};
use crate::protocol::{Endpoint, Header};
use crate::ranges;
use crate::roles::{RoleError, RoleResult};
use crate::scheduler::{Action, Event, Scheduler, Work};
use crate::transport::Mailbox;

/// Exit code of a run that stopped early but left a resumable manifest (EX_TEMPFAIL).
pub const EXIT_PREEMPTED: i32 = 75;

/// Set while ranks may be mid-batch (multi-rank runs, after the plan is sent): if the controller stops now,
/// every rank exits at once (an `Abort` message, then process exit without MPI_Finalize). Failures before
/// the plan is sent shut ranks down cleanly instead.
pub static NEEDS_ABORT: AtomicBool = AtomicBool::new(false);
/// The exit code the controller decided on.
pub static EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// Chunks a loader may have assigned and not yet committed (bounds memory: each chunk's rows, texts and
/// embeddings are held until its shard is written).
pub const CHUNKS_IN_FLIGHT_PER_LOADER: usize = 3;

/// A plan ready to run: the manifest to extend and the work left.
pub struct Prepared {
    /// Held for the whole run: a second run on the same output is refused, not interleaved.
    pub lock: std::fs::File,
    pub plan: Plan,
    pub manifest: Manifest,
    pub work: Vec<Work>,
    pub first_shard: u64,
}

pub enum Start {
    Run(Box<Prepared>),
    /// `--resume` of a manifest that is already complete.
    AlreadyComplete(PathBuf),
}

fn fingerprint(plan: &Plan) -> Fingerprint {
    Fingerprint {
        dataset: dataset_label(&plan.args, &plan.source),
        subset: plan.args.subset.clone(),
        split: plan.args.split.clone(),
        files: plan.inputs.iter().map(|f| SourceFile { path: plan.source.file_id(&f.path), rows: f.rows, bytes: f.bytes }).collect(),
        revision: plan.source.revision.clone(),
        text_field: plan.args.text_field.clone(),
        extract_first_assistant: plan.args.extract_first_assistant,
        chat_format: plan.args.chat(),
        prompt: plan.prompt.clone(),
        max_rows: plan.args.max_rows,
        rows_per_shard: plan.args.rows_per_shard,
        model_sha256: plan.model.weights_sha256.clone(),
        architecture: plan.model.architecture,
        pooling: plan.model.pooling,
        normalize: plan.model.normalize,
        max_seq_length: plan.model.max_seq_length,
        dim: plan.model.dim,
        dtype: plan.args.dtype.clone(),
        encoder: plan.args.encoder,
    }
}

/// Builds the plan from the flags, checking inputs, model and output; errors are one line for the user.
pub fn build_plan(args: &EmbedArgs, layout: &Layout) -> anyhow::Result<Start> {
    use anyhow::Context;
    args.validate().map_err(anyhow::Error::msg)?;
    let model = load_model(args)?;
    let (files, source) = find_dataset(args)?;
    if files.iter().any(|(_, f)| *f != files[0].1) {
        anyhow::bail!("--dataset {}: mixes Parquet and JSONL files; use one format", args.dataset);
    }
    let (inputs, rows_total) = scan_inputs(&files, &args.text_field, args.rows_per_shard, args.max_rows)?;
    if rows_total == 0 {
        anyhow::bail!("--dataset {}: no rows to embed", args.dataset);
    }
    let dataset = dataset_label(args, &source);
    let output = OutputPaths::new(&args.output_root, &model.name, &dataset, args.subset.as_deref(), &args.split);
    ensure_writable(&args.output_root).with_context(|| format!("--output-root {} is not writable", args.output_root.display()))?;
    let created_at = now_rfc3339();
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("run-{}", created_at.replace([':', '.'], "-")));
    let prompt = model.resolve_prompt(args.prompt.as_deref(), args.prompt_name.as_deref()).map_err(anyhow::Error::msg)?;
    let plan = Plan { args: args.clone(), layout: layout.clone(), inputs, rows_total, model, output, run_id, created_at, prompt, source };
    let lock = lock_output(&plan.output)?;
    let all_work = |covered: &dyn Fn(u64) -> Vec<ranges::Range>| -> Vec<Work> {
        (0..plan.chunk_count())
            .filter_map(|c| {
                let spec = plan.chunk(c);
                let todo = ranges::subtract(&[(spec.start, spec.end)], &covered(c));
                (!todo.is_empty()).then_some(Work { chunk: c, todo })
            })
            .collect()
    };
    if args.resume || (args.auto_resume && plan.output.manifest.exists()) {
        let m = resume_manifest(&plan)?;
        if m.status == Status::Complete && m.rows_done() == m.rows_total {
            return Ok(Start::AlreadyComplete(plan.output.manifest.clone()));
        }
        let work = all_work(&|c| m.covered(c));
        let first_shard = m.next_shard_index();
        let mut manifest = m;
        manifest.status = Status::Running;
        manifest.error = None;
        manifest.run_id = plan.run_id.clone();
        manifest.run_config = plan.args.clone();
        manifest.runs.push(run_record(&plan));
        return Ok(Start::Run(Box::new(Prepared { lock, manifest, work, first_shard, plan })));
    }
    let existing = plan.output.manifest.exists() || std::fs::read_dir(&plan.output.shard_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if existing {
        if !args.overwrite {
            anyhow::bail!(
                "output already exists: {} (pass --resume to continue it or --overwrite to replace it)",
                plan.output.manifest.display()
            );
        }
        for p in [&plan.output.manifest, &plan.output.run_summary] {
            if p.exists() {
                std::fs::remove_file(p).with_context(|| format!("--overwrite: removing {}", p.display()))?;
            }
        }
        if plan.output.shard_dir.exists() {
            std::fs::remove_dir_all(&plan.output.shard_dir).with_context(|| format!("--overwrite: removing {}", plan.output.shard_dir.display()))?;
        }
    }
    for d in [&plan.output.shard_dir, plan.output.manifest.parent().expect("manifest has a folder")] {
        ensure_writable(d).with_context(|| format!("--output-root: cannot write {}", d.display()))?;
    }
    let work = all_work(&|_| Vec::new());
    let manifest = new_manifest(&plan);
    Ok(Start::Run(Box::new(Prepared { lock, manifest, work, first_shard: 0, plan })))
}

/// Takes the output's lock (`.lock-{split}` beside the manifest; released when the process ends, even if
/// killed). Another live run on the same output, e.g. a cancelled job still draining, is refused.
fn lock_output(output: &OutputPaths) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    let dir = output.manifest.parent().expect("manifest has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("--output-root: cannot create {}", dir.display()))?;
    let name = output.manifest.file_name().expect("manifest has a name").to_string_lossy().replace("manifest-", ".lock-");
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("--output-root: cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("output {} is in use by another run (lock {}); wait for it to end", output.manifest.display(), path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The dataset's name in the layout and manifest: `--dataset-name`, the Hub repo id, or the file/folder name.
fn dataset_label(args: &EmbedArgs, source: &DatasetSource) -> String {
    args.dataset_name.clone().or_else(|| source.repo.clone()).unwrap_or_else(|| dataset_name(&args.dataset))
}

/// A local path names a local dataset; otherwise an `org/name[@revision]` (or `hf://...`) is a Hub dataset.
fn find_dataset(args: &EmbedArgs) -> anyhow::Result<(Vec<(std::path::PathBuf, crate::plan::Format)>, DatasetSource)> {
    let local_looking = [".jsonl", ".json", ".ndjson", ".parquet"].iter().any(|e| args.dataset.ends_with(e)) || args.dataset.contains(['*', '?', '[']);
    if !std::path::Path::new(&args.dataset).exists() && !local_looking {
        if let Some((id, revision)) = crate::hub::parse_repo_id(&args.dataset) {
            let (snap, paths) = crate::hub::resolve_dataset(&id, &revision, args.subset.as_deref(), &args.split)?;
            log::info!("dataset {id}@{}: {} Parquet files", snap.sha, paths.len());
            let source = DatasetSource { kind: "hf-hub".into(), repo: Some(id), revision: Some(snap.sha), snapshot: Some(snap.dir) };
            return Ok((paths.into_iter().map(|p| (p, crate::plan::Format::Parquet)).collect(), source));
        }
    }
    Ok((discover(&args.dataset)?, DatasetSource::local()))
}

/// A local sentence-transformers folder, or a Hub model repo (`org/name[@revision]`) fetched into the HF cache.
fn load_model(args: &EmbedArgs) -> anyhow::Result<ModelSpec> {
    let spec = args.model.to_string_lossy();
    if !args.model.exists() {
        if let Some((id, revision)) = crate::hub::parse_repo_id(&spec) {
            let snap = crate::hub::resolve_model(&id, &revision)?;
            let mut model = ModelSpec::load(&snap.dir, Some(args.model_name.as_deref().unwrap_or(&id)))?;
            model.source = Some(format!("hf://{id}@{}", snap.sha));
            return Ok(model);
        }
    }
    Ok(ModelSpec::load(&args.model, args.model_name.as_deref())?)
}

/// Reads the manifest to resume, refusing anything that would lose or duplicate rows: other settings, a
/// shard that is missing or changed, a path outside the output, overlapping shards. Then removes leftovers
/// (temporaries, shard files the manifest does not name).
fn resume_manifest(plan: &Plan) -> anyhow::Result<Manifest> {
    let path = &plan.output.manifest;
    if !path.exists() {
        anyhow::bail!("--resume: no manifest at {} (nothing to resume; run without --resume)", path.display());
    }
    let m = Manifest::read(path).map_err(|e| anyhow::anyhow!("--resume: {e}"))?;
    let diffs = m.fingerprint.differences(&fingerprint(plan));
    if !diffs.is_empty() {
        anyhow::bail!("--resume: {} was made with other settings: {}", path.display(), diffs.join("; "));
    }
    let mut named = std::collections::HashSet::new();
    for s in &m.shards {
        let p = resolve_shard_path(path, &s.path).map_err(|e| anyhow::anyhow!("--resume: {}: {e}", path.display()))?;
        let meta = std::fs::metadata(&p).map_err(|e| anyhow::anyhow!("--resume: shard {} named by the manifest: {e} (run `chatspace-mpi verify`)", s.path))?;
        let sha = crate::model::sha256_file(&p)?;
        if meta.len() != s.bytes || sha != s.sha256 {
            anyhow::bail!("--resume: shard {} does not match the manifest (bytes {} vs {}, sha256 {} vs {}); refusing to continue", s.path, meta.len(), s.bytes, sha, s.sha256);
        }
        named.insert(std::fs::canonicalize(&p)?);
    }
    let mut all: Vec<ranges::Range> = Vec::new();
    for s in &m.shards {
        if ranges::overlaps(&ranges::normalize(all.clone()), &ranges::normalize(s.row_ranges.clone())) {
            anyhow::bail!("--resume: shard {} overlaps rows of another shard; the manifest is inconsistent", s.path);
        }
        all.extend(s.row_ranges.iter().copied());
    }
    // Leftovers of interrupted runs: uncommitted shards and temporaries.
    let mut removed = 0;
    if let Ok(dir) = std::fs::read_dir(&plan.output.shard_dir) {
        for entry in dir.flatten() {
            let p = entry.path();
            if p.is_file() && !named.contains(&std::fs::canonicalize(&p)?) {
                std::fs::remove_file(&p)?;
                removed += 1;
            }
        }
    }
    if let Some(idx) = path.parent() {
        for entry in std::fs::read_dir(idx)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    if removed > 0 {
        log::warn!("--resume: removed {removed} uncommitted file(s) left by an interrupted run");
    }
    Ok(m)
}

fn run_record(plan: &Plan) -> RunRecord {
    RunRecord {
        run_id: plan.run_id.clone(),
        started_at: plan.created_at.clone(),
        ended_at: None,
        world_size: plan.layout.world_size,
        layout: plan.layout.summary(),
        exit: None,
        restart_count: std::env::var("SLURM_RESTART_COUNT").ok().and_then(|v| v.parse().ok()),
        rows_embedded: 0,
        duration_seconds: 0.0,
        first_batch_seconds: None,
        deadline: None,
        drain_estimate_seconds: None,
    }
}

fn new_manifest(plan: &Plan) -> Manifest {
    let fp = fingerprint(plan);
    Manifest {
        version: MANIFEST_VERSION,
        status: Status::Running,
        dataset: fp.dataset.clone(),
        subset: plan.args.subset.clone(),
        split: plan.args.split.clone(),
        model: plan.model.name.clone(),
        model_info: plan.model.clone(),
        source: Source { kind: plan.source.kind.clone(), files: fp.files.clone(), repo: plan.source.repo.clone(), revision: plan.source.revision.clone() },
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
            chat_format: plan.args.chat(),
            prompt: plan.prompt.clone(),
            max_seq_length: plan.model.max_seq_length,
            pooling: plan.model.pooling,
            normalize: plan.model.normalize,
            dtype: plan.args.dtype.clone(),
        },
        run_config: plan.args.clone(),
        runs: vec![run_record(plan)],
        error: None,
        tool: TOOL.into(),
        fingerprint: fp,
    }
}

/// Rates and ETA for the progress display.
struct Progress {
    start: Instant,
    last: Instant,
    /// Rows this run has to do.
    total: u64,
    rows: u64,
    skipped: u64,
    tokens: u64,
    padded: u64,
    enabled: bool,
    tty: bool,
    interval: Duration,
    first_batch: Option<f64>,
}

impl Progress {
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let done = self.rows + self.skipped;
        let rate = self.rows as f64 / secs;
        let eta = if done > 0 { format!("{:.0}s", (self.total.saturating_sub(done)) as f64 / ((done as f64) / secs)) } else { "?".into() };
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

fn broadcast(mb: &Mailbox, layout: &Layout, header: &Header) -> RoleResult {
    for e in 1..layout.endpoints() as Endpoint {
        mb.send(e, header.clone(), Vec::new())?;
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

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        signal_hook::consts::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

/// The controller role.
pub fn run(mb: &Mailbox, args: &EmbedArgs, layout: &Layout) -> RoleResult {
    let result = run_inner(mb, args, layout);
    write_status_file(args);
    result
}

/// `--status-file`: "EXIT_CODE STATUS MANIFEST".
fn write_status_file(args: &EmbedArgs) {
    if let Some(path) = &args.status_file {
        let code = EXIT_CODE.load(Ordering::SeqCst);
        let status = match code {
            0 => "complete",
            EXIT_PREEMPTED => "preempted",
            _ => "failed",
        };
        let line = format!("{code} {status} {}\n", STATUS_MANIFEST.lock().map(|m| m.clone()).unwrap_or_default());
        if let Err(e) = crate::output::write_atomic(path, line.as_bytes()) {
            eprintln!("warning: --status-file {}: {e}", path.display());
        }
    }
}

/// The manifest path for `--status-file`.
static STATUS_MANIFEST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn run_inner(mb: &Mailbox, args: &EmbedArgs, layout: &Layout) -> RoleResult {
    let prepared = match build_plan(args, layout) {
        Ok(Start::Run(p)) => *p,
        Ok(Start::AlreadyComplete(path)) => {
            eprintln!("done: {} is already complete; nothing to resume", path.display());
            let _ = broadcast(mb, layout, &Header::Shutdown { code: 0 });
            return Ok(());
        }
        Err(e) => {
            let _ = broadcast(mb, layout, &Header::Shutdown { code: 1 });
            EXIT_CODE.store(crate::EXIT_FAILED, Ordering::SeqCst);
            return Err(RoleError::new(format!("{e:#}")));
        }
    };
    let Prepared { lock: _lock, plan, mut manifest, work, first_shard } = prepared;
    if let Ok(mut m) = STATUS_MANIFEST.lock() {
        *m = plan.output.manifest.display().to_string();
    }
    log::info!("layout: {}", layout.summary());
    broadcast(mb, layout, &Header::Plan(Box::new(plan.clone())))?;
    NEEDS_ABORT.store(layout.world_size > 1, Ordering::SeqCst);
    let manifest_path = plan.output.manifest.clone();
    let write_manifest = |m: &mut Manifest| m.write(&manifest_path).map_err(|e| RoleError::new(format!("{}: {e}", manifest_path.display())));
    write_manifest(&mut manifest)?;
    let embedded_before = manifest.rows_embedded;
    let remaining = ranges::total(&work.iter().flat_map(|w| w.todo.iter().copied()).collect::<Vec<_>>());
    let mut sched = Scheduler::new(work, layout.loaders, layout.writers, CHUNKS_IN_FLIGHT_PER_LOADER, first_shard);
    let mut progress = Progress {
        start: Instant::now(),
        last: Instant::now(),
        total: remaining,
        rows: 0,
        skipped: 0,
        tokens: 0,
        padded: 0,
        enabled: !args.no_progress,
        tty: std::io::stderr().is_terminal(),
        interval: Duration::from_secs_f64(args.progress_interval),
        first_batch: None,
    };
    let mut drain: Option<(Instant, String)> = None;
    let deadline = args.end_time.or_else(crate::walltime::slurm_end_time);
    let mut estimate = crate::walltime::DrainEstimate::default();
    if let (Some(d), Some(r)) = (deadline, manifest.runs.last_mut()) {
        r.deadline = Some(crate::manifest::format_utc(d as i64, 0));
        log::info!("job ends in {:.0}s; draining {}s + drain estimate before", d - crate::walltime::now_unix(), args.stop_before);
    }
    let mut events = VecDeque::from([Event::Start]);
    let estimate_now = std::cell::Cell::new(estimate.seconds());
    // Ends the run: manifest, summary, final line, every rank told its exit code.
    let mut end = |manifest: &mut Manifest, status: Status, exit: String, code: i32, progress: &Progress| -> RoleResult {
        manifest.status = status;
        let secs = progress.start.elapsed().as_secs_f64();
        if let Some(r) = manifest.runs.last_mut() {
            r.drain_estimate_seconds = deadline.map(|_| estimate_now.get());
            r.ended_at = Some(now_rfc3339());
            r.exit = Some(exit);
            r.rows_embedded = manifest.rows_embedded - embedded_before;
            r.duration_seconds = secs;
            r.first_batch_seconds = progress.first_batch;
        }
        write_manifest(manifest)?;
        write_summary(&plan, manifest, secs);
        EXIT_CODE.store(code, Ordering::SeqCst);
        // Ranks with work in flight (failure, stop now) are told to exit at once; otherwise to shut down.
        let header = if NEEDS_ABORT.load(Ordering::SeqCst) { Header::Abort { code } } else { Header::Shutdown { code } };
        let _ = broadcast(mb, layout, &header);
        Ok(())
    };
    loop {
        while let Some(ev) = events.pop_front() {
            for action in sched.handle(ev) {
                match action {
                    Action::Assign { loader, work, writer, shard } => {
                        let header = Header::Assign { chunk: plan.chunk(work.chunk), todo: work.todo, writer: layout.writer(writer), shard };
                        mb.send(layout.loader(loader), header, Vec::new())?;
                    }
                    Action::Commit(entry) => {
                        manifest.add_shard(entry);
                        write_manifest(&mut manifest)?;
                    }
                    Action::Drain => {
                        for e in (0..layout.loaders).map(|i| layout.loader(i)).chain((0..layout.encoders).map(|i| layout.encoder(i))) {
                            mb.send(e, Header::Drain, Vec::new())?;
                        }
                    }
                    Action::Finish { drained } => {
                        progress.tick(true);
                        progress.end_line();
                        let secs = progress.start.elapsed().as_secs_f64().max(1e-9);
                        let complete = manifest.rows_done() == manifest.rows_total;
                        if complete {
                            let waste = 100.0 * (1.0 - progress.tokens as f64 / progress.padded.max(1) as f64);
                            eprintln!(
                                "done: {} rows embedded, {} skipped, {} shards; this run {} rows in {secs:.1}s ({:.1} rows/s, {:.0} tokens/s, {waste:.1}% padding); manifest {}",
                                manifest.rows_embedded,
                                manifest.rows_skipped,
                                manifest.shards.len(),
                                progress.rows,
                                progress.rows as f64 / secs,
                                progress.tokens as f64 / secs,
                                manifest_path.display()
                            );
                            NEEDS_ABORT.store(false, Ordering::SeqCst);
                            end(&mut manifest, Status::Complete, "complete".into(), crate::EXIT_OK, &progress)?;
                        } else {
                            let reason = drain.as_ref().map(|d| d.1.clone()).unwrap_or_else(|| "drained".into());
                            eprintln!(
                                "preempted ({reason}): drained in {:.2}s; this run embedded {} rows and committed {}; {}/{} rows committed in {} shards; continue with --resume (manifest {})",
                                drain.as_ref().map_or(0.0, |d| d.0.elapsed().as_secs_f64()),
                                progress.rows,
                                manifest.rows_embedded - embedded_before,
                                manifest.rows_done(),
                                manifest.rows_total,
                                manifest.shards.len(),
                                manifest_path.display()
                            );
                            debug_assert!(drained, "an undrained run that finishes is complete");
                            NEEDS_ABORT.store(false, Ordering::SeqCst);
                            end(&mut manifest, Status::Preempted, format!("preempted: {reason}"), EXIT_PREEMPTED, &progress)?;
                        }
                        return Ok(());
                    }
                    Action::Fail(message) => {
                        progress.end_line();
                        manifest.error = Some(message.clone());
                        if let Err(e) = end(&mut manifest, Status::Failed, "failed".into(), crate::EXIT_FAILED, &progress) {
                            eprintln!("warning: {}", e.message);
                        }
                        return Err(RoleError::new(message));
                    }
                }
            }
        }
        if let (Some(end_time), None) = (deadline, &drain) {
            let now = crate::walltime::now_unix();
            if crate::walltime::should_drain(now, end_time, args.stop_before, &estimate) {
                let what = format!("job time limit in {:.0}s (drain estimate {:.1}s)", end_time - now, estimate.seconds());
                progress.end_line();
                eprintln!("draining: {what}");
                drain = Some((Instant::now(), what));
                events.push_back(Event::Drain);
                continue;
            }
        }
        if let Some((since, reason)) = &drain {
            if since.elapsed().as_secs_f64() > args.drain_timeout {
                let why = format!("{reason}; drain took longer than --drain-timeout {}s", args.drain_timeout);
                return stop_now(&mut end, &mut manifest, &progress, why, args);
            }
        }
        progress.tick(false);
        let Some(env) = mb.recv_timeout(Duration::from_millis(50))? else { continue };
        match env.header {
            Header::Progress { rows, tokens, padded_tokens, seconds } => {
                estimate.observe_batch(seconds);
                estimate_now.set(estimate.seconds());
                if progress.first_batch.is_none() {
                    progress.first_batch = Some(progress.start.elapsed().as_secs_f64());
                }
                progress.rows += rows;
                progress.tokens += tokens;
                progress.padded += padded_tokens;
            }
            Header::ChunkLoaded { skipped, .. } => progress.skipped += skipped,
            Header::ShardWritten(entry) => events.push_back(Event::ShardWritten(*entry)),
            Header::Released { chunk } => events.push_back(Event::Released { chunk }),
            Header::Signal { rank, signal, count } => {
                let what = format!("{} on rank {rank}", signal_name(signal));
                if count >= 2 {
                    return stop_now(&mut end, &mut manifest, &progress, format!("second signal ({what})"), args);
                }
                if drain.is_none() {
                    progress.end_line();
                    eprintln!("draining: {what}; finishing in-flight batches (a second signal stops at once)");
                    drain = Some((Instant::now(), what));
                    events.push_back(Event::Drain);
                }
            }
            Header::Failed { role: _, message } => events.push_back(Event::Failed { from: layout.describe(env.from), message }),
            other => events.push_back(Event::Failed { from: "controller".into(), message: format!("unexpected {} message (this is a bug)", other.kind()) }),
        }
    }
}

/// Stops without waiting for in-flight work: what is committed stays; the manifest says preempted.
fn stop_now(
    end: &mut impl FnMut(&mut Manifest, Status, String, i32, &Progress) -> RoleResult,
    manifest: &mut Manifest,
    progress: &Progress,
    why: String,
    args: &EmbedArgs,
) -> RoleResult {
    progress.end_line();
    eprintln!(
        "preempted: stopping now ({why}); {}/{} rows committed in {} shards; continue with --resume",
        manifest.rows_done(),
        manifest.rows_total,
        manifest.shards.len()
    );
    end(manifest, Status::Preempted, format!("aborted: {why}"), EXIT_PREEMPTED, progress)?;
    if !NEEDS_ABORT.load(Ordering::SeqCst) {
        // One process: roles may be mid-batch; the manifest is written, so stop here.
        write_status_file(args);
        std::process::exit(EXIT_PREEMPTED);
    }
    // Ranks may be mid-batch: `end` told them to exit at once (Abort), and so does this rank (see lib.rs).
    Ok(())
}
