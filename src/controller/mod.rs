//! Controller (rank 0): prepares the run ([`prepare`], [`resume`]), feeds what the other roles report to the
//! [`Scheduler`] and carries out its actions (assignments, commits to the [`Checkpoint`], drains), and ends the
//! run with an [`Outcome`] that says how the process must exit.

pub mod calibrate;
pub(crate) mod prepare;
mod report;
mod resume;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

pub use prepare::{build_plan, Prepared, Start, MAX_SHARD_EMBEDDING_BYTES};
pub use report::{signal_name, write_status_file};
pub use resume::FOOTER_CHECKS;

use crate::checkpoint::Checkpoint;
use crate::cli::EmbedArgs;
use crate::layout::Layout;
use crate::manifest::{now_rfc3339, Status};
use crate::plan::Plan;
use crate::protocol::{Endpoint, Envelope, Header};
use crate::scheduler::{Action, Event, Policy, Scheduler};
use crate::transport::{Mailbox, TransportError};
use crate::walltime::now_unix;
use report::Progress;

pub use crate::exit::EXIT_PREEMPTED;

/// Chunks a loader may have assigned and not yet committed (bounds memory: each chunk's rows, texts and
/// embeddings are held until its shard is written).
pub const CHUNKS_IN_FLIGHT_PER_LOADER: usize = 3;

/// How a run ended, for the process hosting the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub code: i32,
    /// Ranks may be mid-batch: every rank was told to exit at once (`Abort`), and this process must exit too,
    /// without waiting for its other roles or MPI_Finalize. Committed shards and the manifest are safe.
    pub abort: bool,
    /// The failure line of a failed run.
    pub error: Option<String>,
    /// The manifest, once the run got that far.
    pub manifest: Option<PathBuf>,
    /// The error line is printed and the status file written already (before the other ranks were told).
    pub said: bool,
}

impl Outcome {
    fn failed(message: String) -> Outcome {
        Outcome { code: crate::exit::EXIT_FAILED, abort: false, error: Some(message), manifest: None, said: false }
    }
}

/// The controller role: prepares, runs and ends the job.
pub fn run(mb: &Mailbox, args: &EmbedArgs, layout: &Layout) -> Outcome {
    let launched = std::time::Instant::now();
    match build_plan(args, layout) {
        Ok(Start::Run(p)) => {
            let mut run = Run::new(mb, layout, *p, launched);
            let end = run.drive();
            run.finish(end)
        }
        Ok(Start::AlreadyComplete(path)) => {
            eprintln!("done: {} is already complete; nothing to resume", path.display());
            verdict(args.status_file.as_deref(), crate::exit::EXIT_OK, Some(&path));
            let _ = broadcast(mb, layout, &Header::Shutdown { code: crate::exit::EXIT_OK });
            Outcome { code: crate::exit::EXIT_OK, abort: false, error: None, manifest: Some(path), said: true }
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {message}");
            verdict(args.status_file.as_deref(), crate::exit::EXIT_FAILED, None);
            let _ = broadcast(mb, layout, &Header::Shutdown { code: crate::exit::EXIT_FAILED });
            Outcome { said: true, ..Outcome::failed(message) }
        }
    }
}

/// Writes `--status-file` before the other ranks hear the end: once they exit (an `Abort` makes them exit
/// non-zero), the launcher may kill this process (srun --kill-on-bad-exit) before it gets further.
fn verdict(status_file: Option<&std::path::Path>, code: i32, manifest: Option<&std::path::Path>) {
    if let Some(path) = status_file {
        write_status_file(path, code, manifest);
    }
}

fn broadcast(mb: &Mailbox, layout: &Layout, header: &Header) -> Result<(), TransportError> {
    for e in 1..layout.endpoints() as Endpoint {
        mb.send(e, header.clone(), Vec::new())?;
    }
    Ok(())
}

/// How the event loop ended.
enum End {
    /// Every row is covered.
    Complete,
    /// A drain finished: what was in flight is committed or released.
    Drained,
    /// Stopped without waiting for work in flight.
    StoppedNow(String),
    Failed(String),
}

/// A run in progress.
struct Run<'a> {
    mb: &'a Mailbox,
    layout: &'a Layout,
    plan: Plan,
    checkpoint: Checkpoint,
    sched: Scheduler,
    progress: Progress,
    embedded_before: u64,
    /// When the run's record in the manifest header was last refreshed (see [`Run::refresh_header`]).
    refreshed: std::time::Instant,
    /// Held until the run ends.
    _lock: std::fs::File,
}

impl<'a> Run<'a> {
    fn new(mb: &'a Mailbox, layout: &'a Layout, p: Prepared, launched: std::time::Instant) -> Run<'a> {
        let Prepared { lock, plan, mut checkpoint, work, first_shard } = p;
        let deadline = plan.config.end_time.or_else(crate::walltime::slurm_end_time);
        if let (Some(d), Some(r)) = (deadline, checkpoint.manifest.runs.last_mut()) {
            r.deadline = Some(crate::manifest::format_utc(d as i64, 0));
            log::info!("job ends in {:.0}s; draining {}s + drain estimate before", d - now_unix(), plan.config.stop_before_seconds);
        }
        let policy = Policy {
            loaders: layout.loaders,
            writers: layout.writers,
            cap: CHUNKS_IN_FLIGHT_PER_LOADER,
            first_shard,
            drain_timeout: plan.config.drain_timeout_seconds,
            stop_before: plan.config.stop_before_seconds,
            deadline,
        };
        let display = match (plan.config.progress, plan.config.progress_bar) {
            (false, _) => report::Display::Off,
            (true, false) => report::Display::Auto,
            (true, true) => report::Display::Bar,
        };
        let progress = Progress::new(work.rows_left(), layout.encoders, display, plan.config.progress_interval_seconds, launched);
        let embedded_before = checkpoint.manifest.rows_embedded;
        let refreshed = std::time::Instant::now();
        Run { mb, layout, plan, checkpoint, sched: Scheduler::new(work, policy), progress, embedded_before, refreshed, _lock: lock }
    }

    /// Sends the plan, then turns messages into scheduler events and carries out its actions until the end.
    fn drive(&mut self) -> End {
        log::info!("layout: {}", self.layout.summary());
        if let Err(e) = broadcast(self.mb, self.layout, &Header::Plan(Box::new(self.plan.clone()))) {
            return End::Failed(e.to_string());
        }
        let mut events = VecDeque::from([Event::Start]);
        loop {
            while let Some(event) = events.pop_front() {
                for action in self.sched.handle(now_unix(), event) {
                    match self.act(action) {
                        Ok(None) => {}
                        Ok(Some(end)) => return end,
                        Err(message) => return End::Failed(message),
                    }
                }
            }
            self.progress.tick(false);
            self.refresh_header();
            match self.mb.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(env)) => events.extend(self.event_of(env)),
                Ok(None) => {}
                Err(e) => return End::Failed(e.to_string()),
            }
            events.push_back(Event::Tick);
        }
    }

    fn act(&mut self, action: Action) -> Result<Option<End>, String> {
        let send = |to: Endpoint, header: Header| self.mb.send(to, header, Vec::new()).map_err(|e| e.to_string());
        match action {
            Action::Assign { loader, work, writer, shard } => {
                send(
                    self.layout.loader(loader),
                    Header::Assign { chunk: self.plan.chunk(work.chunk), todo: work.todo, writer: self.layout.writer(writer), shard },
                )?;
            }
            Action::Commit(entry) => self.checkpoint.commit(&entry).map_err(|e| format!("committing {}: {e}", entry.label()))?,
            Action::Drain { reason, by_signal } => {
                self.progress.end_line();
                let hint = if by_signal { "; finishing in-flight batches (a second signal stops at once)" } else { "" };
                eprintln!("draining: {reason}{hint}");
                for e in (0..self.layout.loaders).map(|i| self.layout.loader(i)).chain((0..self.layout.encoders).map(|i| self.layout.encoder(i))) {
                    send(e, Header::Drain)?;
                }
            }
            Action::Finish { .. } => {
                let m = &self.checkpoint.manifest;
                return Ok(Some(if m.rows_done() == m.rows_total { End::Complete } else { End::Drained }));
            }
            Action::StopNow { reason } => return Ok(Some(End::StoppedNow(reason))),
            Action::Fail(message) => return Ok(Some(End::Failed(message))),
        }
        Ok(None)
    }

    /// The scheduler event a message makes, if any (progress reports only update the display).
    fn event_of(&mut self, env: Envelope) -> Option<Event> {
        match env.header {
            Header::Progress { rows, tokens, padded_tokens, seconds } => {
                self.progress.batch(rows, tokens, padded_tokens, seconds);
                Some(Event::BatchDone { seconds })
            }
            Header::ChunkLoaded { skipped, rows, tokens, truncated, lengths, .. } => {
                self.progress.skipped += skipped;
                self.progress.truncated += truncated;
                if let Some(r) = self.checkpoint.manifest.runs.last_mut() {
                    r.rows_tokenized += rows;
                    r.tokens += tokens;
                    r.rows_truncated += truncated;
                    crate::tokenize::add_bins(&mut r.token_lengths, &lengths);
                }
                None
            }
            Header::ShardWritten(entry) => Some(Event::ShardWritten(*entry)),
            Header::Released { chunk } => Some(Event::Released { chunk }),
            Header::Signal { rank, signal, count } => Some(Event::Signal { what: format!("{} on rank {rank}", signal_name(signal)), count }),
            Header::Failed { role: _, message } => Some(Event::Failed { from: self.layout.describe(env.from), message }),
            Header::RankLost { ranks, silent_seconds } => Some(Event::Failed {
                from: ranks.iter().map(|&r| self.layout.describe_rank(r as usize)).collect::<Vec<_>>().join(", "),
                message: format!(
                    "lost: no message for {silent_seconds:.0}s (--rank-timeout {}): its node is down or unreachable, or the process was killed; what is committed is kept, --resume continues",
                    self.plan.config.rank_timeout_seconds
                ),
            }),
            other => Some(Event::Failed { from: "controller".into(), message: format!("unexpected {} message (this is a bug)", other.kind()) }),
        }
    }

    /// Every `--progress-interval` (at least a second) the run's record in the manifest header gets the rows
    /// committed and seconds so far, so that `status` mid-run shows live throughput and time left.
    fn refresh_header(&mut self) {
        let every = Duration::from_secs_f64(self.plan.config.progress_interval_seconds.max(1.0));
        if self.refreshed.elapsed() < every {
            return;
        }
        self.refreshed = std::time::Instant::now();
        let m = &mut self.checkpoint.manifest;
        let rows = m.rows_embedded - self.embedded_before;
        if let Some(r) = m.runs.last_mut() {
            r.rows_embedded = rows;
            r.duration_seconds = self.progress.seconds();
            r.first_batch_seconds = self.progress.first_batch;
        }
        if let Err(e) = self.checkpoint.write_header() {
            // The shard log holds every commit; the header's live figures are for people.
            log::warn!("refreshing the manifest header: {e}");
        }
    }

    /// Records the end in the manifest and the summary, tells every rank, and says how to exit.
    fn finish(mut self, end: End) -> Outcome {
        if matches!(end, End::Complete | End::Drained) {
            self.progress.tick(true);
        }
        self.progress.end_line();
        if self.progress.truncated > 0 {
            // Once per run: text past the model's length is not in the embedding.
            let what = if self.plan.windows.is_some() {
                "were embedded in windows (--long-text chunk)"
            } else {
                "were cut (--long-text chunk embeds all of them in windows)"
            };
            eprintln!(
                "warning: {} of the {} rows this run tokenized were longer than the model's max_seq_length {} and {what} (`chatspace-mpi tokens` shows the length distribution)",
                self.progress.truncated,
                self.checkpoint.manifest.runs.last().map_or(0, |r| r.rows_tokenized),
                self.plan.model.max_seq_length
            );
        }
        let multi_rank = self.layout.world_size > 1;
        let (status, exit, mut code, abort, mut error) = match end {
            End::Complete => {
                let m = &self.checkpoint.manifest;
                eprintln!(
                    "done: {} rows embedded, {} skipped, {} shards; {}; manifest {}",
                    m.rows_embedded,
                    m.rows_skipped,
                    m.num_shards,
                    self.progress.this_run(),
                    self.checkpoint.path().display()
                );
                (Status::Complete, "complete".to_string(), crate::exit::EXIT_OK, false, None)
            }
            End::Drained => {
                let (since, reason) = self.sched.drain().map_or((now_unix(), "drained".to_string()), |(t, r)| (t, r.to_string()));
                let m = &self.checkpoint.manifest;
                eprintln!(
                    "preempted ({reason}): drained in {:.2}s; this run embedded {} rows and committed {}; {}/{} rows committed in {} shards; continue with --resume (manifest {})",
                    now_unix() - since,
                    self.progress.rows,
                    m.rows_embedded - self.embedded_before,
                    m.rows_done(),
                    m.rows_total,
                    m.num_shards,
                    self.checkpoint.path().display()
                );
                (Status::Preempted, format!("preempted: {reason}"), EXIT_PREEMPTED, false, None)
            }
            End::StoppedNow(why) => {
                let m = &self.checkpoint.manifest;
                eprintln!(
                    "preempted: stopping now ({why}); {}/{} rows committed in {} shards; continue with --resume",
                    m.rows_done(),
                    m.rows_total,
                    m.num_shards
                );
                // Roles may be mid-batch, here and on other ranks: every process exits at once.
                (Status::Preempted, format!("aborted: {why}"), EXIT_PREEMPTED, true, None)
            }
            End::Failed(message) => (Status::Failed, "failed".to_string(), crate::exit::EXIT_FAILED, multi_rank, Some(message)),
        };
        let secs = self.progress.seconds();
        let m = &mut self.checkpoint.manifest;
        m.status = status;
        m.error = error.clone();
        if let Some(r) = m.runs.last_mut() {
            r.drain_estimate_seconds = r.deadline.is_some().then(|| self.sched.drain_estimate());
            r.ended_at = Some(now_rfc3339());
            r.exit = Some(exit);
            r.rows_embedded = m.rows_embedded - self.embedded_before;
            r.duration_seconds = secs;
            r.first_batch_seconds = self.progress.first_batch;
        }
        if let Err(e) = self.checkpoint.write_header() {
            // Every commit is in the log; only the header's end record is missing.
            if code == crate::exit::EXIT_OK {
                (code, error) = (crate::exit::EXIT_FAILED, Some(format!("writing the manifest: {e}")));
            } else {
                eprintln!("warning: writing the manifest: {e}");
            }
        }
        report::write_summary(&self.plan, &self.checkpoint.manifest, secs);
        if status == Status::Complete {
            // The card lists every output of the root, so `load_dataset` sees each model as a config.
            match crate::card::write(&self.plan.output.root) {
                Ok(p) => log::info!("dataset card: {}", p.display()),
                Err(e) => eprintln!("warning: dataset card: {e}"),
            }
        }
        let (bytes, commits) = self.checkpoint.written();
        log::info!("checkpoint: {commits} commits, {bytes} bytes written ({:.0} per commit)", bytes as f64 / commits.max(1) as f64);
        if let Some(e) = &error {
            // Before the other ranks exit (see `verdict`): the error line reaches the job log.
            eprintln!("error: {e}");
        }
        verdict(self.plan.config.status_file.as_deref(), code, Some(self.checkpoint.path()));
        let header = if abort { Header::Abort { code } } else { Header::Shutdown { code } };
        let _ = broadcast(self.mb, self.layout, &header);
        Outcome { code, abort, error, manifest: Some(self.checkpoint.path().to_path_buf()), said: true }
    }
}
