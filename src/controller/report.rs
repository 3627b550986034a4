//! What the controller tells people: the progress line, the closing line, the run summary file and the
//! `--status-file` line.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::manifest::{Manifest, TOOL};
use crate::plan::Plan;
use crate::walltime::hms;

/// Rates and ETA for the progress display.
pub struct Progress {
    pub start: Instant,
    last: Instant,
    /// Rows this run has to do.
    pub total: u64,
    pub rows: u64,
    pub skipped: u64,
    /// Rows the loaders cut at the model's length.
    pub truncated: u64,
    pub tokens: u64,
    pub padded: u64,
    /// Encoder seconds spent on batches (all encoders): against `encoders` x the run's time, how busy they are.
    busy: f64,
    encoders: usize,
    enabled: bool,
    /// A live line rewritten in place (stderr is a terminal, or `--progress-bar`); timestamped lines otherwise.
    live: bool,
    interval: Duration,
    /// When the controller started (before preparing: model, inputs, resume checks).
    launched: Instant,
    /// Seconds from the controller's start to the first embedded batch.
    pub first_batch: Option<f64>,
}

impl Progress {
    /// Rates count from now; the first batch's time from `launched`.
    pub fn new(total: u64, encoders: usize, display: Display, interval_seconds: f64, launched: Instant) -> Progress {
        let now = Instant::now();
        Progress {
            start: now,
            last: now,
            total,
            rows: 0,
            skipped: 0,
            truncated: 0,
            tokens: 0,
            padded: 0,
            busy: 0.0,
            encoders,
            enabled: display != Display::Off,
            live: display == Display::Bar || (display == Display::Auto && std::io::stderr().is_terminal()),
            // Validated finite and at most a year (config), so this cannot panic.
            interval: Duration::from_secs_f64(interval_seconds),
            launched,
            first_batch: None,
        }
    }

    /// An encoder's batch report (`seconds`: the encoder's time on it).
    pub fn batch(&mut self, rows: u64, tokens: u64, padded: u64, seconds: f64) {
        self.first_batch.get_or_insert_with(|| self.launched.elapsed().as_secs_f64());
        self.rows += rows;
        self.tokens += tokens;
        self.padded += padded;
        if seconds.is_finite() && seconds > 0.0 {
            self.busy += seconds;
        }
    }

    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn line(&self) -> String {
        let secs = self.seconds().max(1e-9);
        let done = self.rows + self.skipped;
        let rate = self.rows as f64 / secs;
        let eta = if done > 0 { hms((self.total.saturating_sub(done)) as f64 / ((done as f64) / secs)) } else { "?".into() };
        // Busy encoders are the bottleneck; idle ones wait for loaders (reading, tokenizing) or writers.
        let busy = (100.0 * self.busy / (secs * self.encoders.max(1) as f64)).min(100.0);
        let waits = if busy >= 90.0 { "" } else { " (waiting for loaders or writers)" };
        let cut = if self.truncated > 0 { format!(", {} rows past the max length", self.truncated) } else { String::new() };
        format!(
            "{done}/{} rows ({:.1}%), {rate:.1} rows/s, {:.0} tokens/s, encoders busy {busy:.0}%{waits}{cut}, ETA {eta}",
            self.total,
            100.0 * done as f64 / self.total.max(1) as f64,
            self.tokens as f64 / secs
        )
    }

    /// Prints the progress line when it is due (or now, with `force`).
    pub fn tick(&mut self, force: bool) {
        if !self.enabled {
            return;
        }
        let every = if self.live { Duration::from_millis(500) } else { self.interval };
        if force || self.last.elapsed() >= every {
            self.last = Instant::now();
            if self.live {
                eprint!("\r\x1b[2K{}", self.line());
            } else {
                // Log lines (Slurm job logs, mpirun output) carry the time: UTC to the second.
                let now = crate::manifest::now_rfc3339();
                eprintln!("progress: {}Z {}", now.get(..19).unwrap_or(&now), self.line());
            }
        }
    }

    /// Ends a live terminal line before other output.
    pub fn end_line(&self) {
        if self.enabled && self.live {
            eprintln!();
        }
    }

    /// "this run N rows in S s (R rows/s, T tokens/s, P% padding)".
    pub fn this_run(&self) -> String {
        let secs = self.seconds().max(1e-9);
        let waste = 100.0 * (1.0 - self.tokens as f64 / self.padded.max(1) as f64);
        format!(
            "this run {} rows in {secs:.1}s ({:.1} rows/s, {:.0} tokens/s, {waste:.1}% padding)",
            self.rows,
            self.rows as f64 / secs,
            self.tokens as f64 / secs
        )
    }
}

/// How progress is shown (`--no-progress`, `--progress-bar`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Off,
    /// A live line on a terminal, timestamped lines otherwise.
    Auto,
    /// A live line even when stderr is not a terminal (under mpirun, rank 0's stderr is a pipe to mpirun).
    Bar,
}

/// `run-{S}.json`: the last run in a few keys.
pub fn write_summary(plan: &Plan, m: &Manifest, secs: f64) {
    let summary = serde_json::json!({
        "dataset": m.dataset, "subset": m.subset, "split": m.split, "model": m.model,
        "created_at": m.created_at, "run_id": m.run_id, "status": m.status, "duration_seconds": secs,
        "rows_total": m.rows_total, "rows_embedded": m.rows_embedded, "rows_skipped": m.rows_skipped,
        "num_shards": m.num_shards, "embedding_dim": m.embedding_dim, "git_sha": Some(env!("CHATSPACE_GIT_SHA")).filter(|s| !s.is_empty()),
        "manifest_path": plan.output.manifest, "shard_log": plan.output.shard_log, "min_norm": m.min_norm, "max_norm": m.max_norm,
        "tool_version": TOOL, "world_size": plan.layout.world_size, "layout": plan.layout.summary(), "error": m.error,
    });
    let mut bytes = serde_json::to_vec_pretty(&summary).expect("the summary serializes; this is a bug");
    bytes.push(b'\n');
    if let Err(e) = crate::output::write_atomic(&plan.output.run_summary, &bytes) {
        eprintln!("warning: cannot write {}: {e}", plan.output.run_summary.display());
    }
}

/// `--status-file`: "EXIT_CODE STATUS MANIFEST" (for batch scripts: launchers do not always pass rank 0's
/// exit code through).
pub fn write_status_file(path: &Path, code: i32, manifest: Option<&Path>) {
    let status = match code {
        crate::exit::EXIT_OK => "complete",
        crate::exit::EXIT_PREEMPTED => "preempted",
        _ => "failed",
    };
    let line = format!("{code} {status} {}\n", manifest.map(|m| m.display().to_string()).unwrap_or_default());
    if let Err(e) = crate::output::write_atomic(path, line.as_bytes()) {
        eprintln!("warning: --status-file {}: {e}", path.display());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_rows_and_the_first_batch() {
        let launched = Instant::now() - Duration::from_secs(3);
        let mut p = Progress::new(100, 1, Display::Off, 10.0, launched);
        assert!(p.line().starts_with("0/100 rows (0.0%)") && p.line().ends_with("ETA ?"), "{}", p.line());
        p.batch(30, 300, 400, 0.5);
        p.skipped = 10;
        assert!(p.first_batch.is_some_and(|s| s >= 3.0), "counted from the controller's start");
        assert!(p.line().starts_with("40/100 rows (40.0%)"), "{}", p.line());
        assert!(p.this_run().starts_with("this run 30 rows in") && p.this_run().ends_with("25.0% padding)"), "{}", p.this_run());
    }

    #[test]
    fn status_file_names_the_outcome() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("status");
        write_status_file(&f, 75, Some(Path::new("/o/m.json")));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "75 preempted /o/m.json\n");
        write_status_file(&f, 1, None);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1 failed \n");
    }

    #[test]
    fn the_line_says_how_busy_encoders_are() {
        let mut p = Progress::new(100, 2, Display::Off, 10.0, Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        p.batch(10, 100, 100, 0.0);
        let l = p.line();
        assert!(l.starts_with("10/100 rows (10.0%)"), "{l}");
        assert!(l.contains("encoders busy 0% (waiting for loaders or writers)"), "{l}");
        p.batch(10, 100, 100, 1e6);
        assert!(p.line().contains("encoders busy 100%, ETA "), "{}", p.line());
    }
}
