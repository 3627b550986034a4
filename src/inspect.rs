//! `verify` and `status`: reading a manifest, its shard log and its shards back, without MPI. `verify` hashes
//! every shard on `--jobs` threads and reports progress.

use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Array, UInt64Array};
use arrow_schema::DataType;
use sha2::Digest;

use crate::manifest::{Manifest, ShardEntry, Status};
use crate::output::{open_regular, resolve_shard_path};
use crate::ranges;

/// Checks one shard file against its manifest entry; returns problems. `hashed` counts the bytes read.
fn check_shard(manifest: &Path, m: &Manifest, s: &ShardEntry, hashed: &AtomicU64) -> Vec<String> {
    let mut problems = Vec::new();
    if !s.has_file() {
        // An entry of skipped rows only (the reader checked it has no rows or bytes): nothing to read.
        return entry_problems(s).into_iter().map(|e| format!("{}: {e}", s.label())).collect();
    }
    let mut bad = |msg: String| problems.push(format!("{}: {msg}", s.path));
    let path = match resolve_shard_path(manifest, &s.path) {
        Ok(p) => p,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let open = || open_regular(&path).map_err(|e| format!("cannot read: {e}"));
    let mut file = match open() {
        Ok(f) => f,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len != s.bytes {
        bad(format!("{len} bytes, manifest says {}", s.bytes));
        return problems;
    }
    let mut hasher = HashCounter { sha: sha2::Sha256::new(), counted: hashed };
    if let Err(e) = std::io::copy(&mut std::io::Read::take(&mut file, s.bytes), &mut hasher) {
        bad(format!("cannot read: {e}"));
        return problems;
    }
    let sha = crate::model::hex(&hasher.sha.finalize());
    if sha != s.sha256 {
        bad(format!("sha256 {sha}, manifest says {}", s.sha256));
        return problems;
    }
    if s.embedding_dim != m.embedding_dim {
        bad(format!("embedding_dim {} differs from the manifest's {}", s.embedding_dim, m.embedding_dim));
    }
    entry_problems(s).into_iter().for_each(&mut bad);
    match open().and_then(|f| check_rows(f, m.fingerprint.precision, m.embedding_dim, s)) {
        Ok(()) => {}
        Err(e) => bad(e),
    }
    problems
}

/// Problems of an entry's own numbers (without the entry's name): row ranges sorted and disjoint, covering
/// `rows + rows_skipped` ids.
fn entry_problems(s: &ShardEntry) -> Vec<String> {
    let mut problems = Vec::new();
    if ranges::normalize(s.row_ranges.clone()) != s.row_ranges {
        problems.push("row_ranges are not sorted and disjoint".to_string());
    }
    let counted = s.rows.saturating_add(s.rows_skipped);
    if ranges::total(&s.row_ranges) != counted {
        problems.push(format!("row_ranges cover {} rows but rows + rows_skipped = {counted}", ranges::total(&s.row_ranges)));
    }
    problems
}

/// A hasher that counts what goes through it (for progress).
struct HashCounter<'a> {
    sha: sha2::Sha256,
    counted: &'a AtomicU64,
}

impl std::io::Write for HashCounter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.sha.update(b);
        self.counted.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The shard's schema and row ids: strictly increasing, inside its ranges, as many as the entry says.
fn check_rows(file: File, precision: crate::quantize::Precision, dim: usize, s: &ShardEntry) -> Result<(), String> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format!("not a valid Parquet file: {e}"))?;
    let schema = reader.schema().clone();
    let (item, stored) = (precision.value_type(), precision.stored_dim(dim));
    let want_emb = |t: &DataType| matches!(t, DataType::FixedSizeList(f, n) if f.data_type() == &item && *n as usize == stored);
    match (schema.field_with_name("row_id"), schema.field_with_name("text"), schema.field_with_name("embedding")) {
        (Ok(r), Ok(t), Ok(e)) if r.data_type() == &DataType::UInt64 && t.data_type() == &DataType::Utf8 && want_emb(e.data_type()) => {}
        _ => return Err(format!("schema is not row_id uint64, text utf8, embedding fixed_size_list<{}, {stored}>", item.to_string().to_lowercase())),
    }
    let mask = parquet::arrow::ProjectionMask::columns(reader.parquet_schema(), ["row_id"]);
    let reader = reader.with_projection(mask).build().map_err(|e| format!("cannot read rows: {e}"))?;
    let (mut n, mut last, mut outside) = (0u64, None::<u64>, 0u64);
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot decode rows: {e}"))?;
        let ids = batch.column(0).as_any().downcast_ref::<UInt64Array>().ok_or("row_id is not uint64")?;
        for i in 0..ids.len() {
            let id = ids.value(i);
            if last.is_some_and(|l| id <= l) {
                return Err(format!("row ids not strictly increasing at row {id} (duplicate or unsorted)"));
            }
            last = Some(id);
            outside += u64::from(!ranges::contains(&s.row_ranges, id));
            n += 1;
        }
    }
    if outside > 0 {
        return Err(format!("{outside} row ids outside the shard's row_ranges"));
    }
    if n != s.rows {
        return Err(format!("{n} rows in the file, manifest says {}", s.rows));
    }
    Ok(())
}

/// What `verify` read, for its closing line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifyStats {
    pub bytes: u64,
    pub seconds: f64,
    pub jobs: usize,
}

/// Checks every shard on `jobs` threads (0: one per core); progress on stderr when `progress`.
fn check_all(manifest: &Path, m: &Manifest, jobs: usize, progress: bool) -> (Vec<String>, VerifyStats) {
    let jobs = if jobs == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { jobs }
        .clamp(1, m.shards.len().clamp(1, crate::config::MOST_THREADS));
    let started = Instant::now();
    let (next, hashed, finished) = (AtomicUsize::new(0), AtomicU64::new(0), AtomicUsize::new(0));
    let results: Vec<std::sync::Mutex<Vec<String>>> = m.shards.iter().map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(s) = m.shards.get(i) else { return };
                    let problems = check_shard(manifest, m, s, &hashed);
                    *results[i].lock().expect("a verify thread panicked; this is a bug") = problems;
                    finished.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        let tty = std::io::stderr().is_terminal();
        let mut last = Instant::now();
        while progress && workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(if tty { 1 } else { 10 }) {
                last = Instant::now();
                let (done, mb, secs) =
                    (finished.load(Ordering::Relaxed), hashed.load(Ordering::Relaxed) as f64 / 1e6, started.elapsed().as_secs_f64());
                let line = format!("verify: {done}/{} shards, {mb:.0} MB hashed, {:.0} MB/s", m.shards.len(), mb / secs.max(1e-9));
                if tty {
                    eprint!("\r\x1b[2K{line}")
                } else {
                    eprintln!("{line}")
                }
            }
        }
        if progress && tty {
            eprint!("\r\x1b[2K");
        }
    });
    let problems = results.into_iter().flat_map(|r| r.into_inner().unwrap_or_default()).collect();
    (problems, VerifyStats { bytes: hashed.load(Ordering::Relaxed), seconds: started.elapsed().as_secs_f64(), jobs })
}

/// Every problem of a manifest and its shards; empty when all is consistent.
pub fn verify(manifest: &Path, jobs: usize, progress: bool) -> Result<(Manifest, Vec<String>, VerifyStats), String> {
    let m = Manifest::read(manifest).map_err(|e| e.to_string())?;
    let (mut problems, stats) = check_all(manifest, &m, jobs, progress);
    let root = crate::output::root_of_manifest(manifest);
    let folders: std::collections::BTreeSet<_> = m
        .shards
        .iter()
        .filter(|s| s.has_file())
        .filter_map(|s| resolve_shard_path(manifest, &s.path).ok()?.parent().map(Path::to_path_buf))
        .collect();
    for dir in folders.iter().filter(|d| d.exists()) {
        if let Err(e) = crate::output::check_inside_root(&root, dir) {
            problems.push(e);
        }
    }
    for (a, b) in m.overlapping_shards() {
        problems.push(format!("{}: rows overlap those of {} (rows would be duplicated)", m.shards[b].label(), m.shards[a].label()));
    }
    for s in &m.shards {
        if s.row_ranges.iter().any(|r| r.1 > m.rows_total) {
            problems.push(format!("{}: rows beyond rows_total {}", s.label(), m.rows_total));
        }
    }
    if m.status == Status::Complete {
        let missing = ranges::subtract(&[(0, m.rows_total)], &m.covered());
        if !missing.is_empty() {
            problems.push(format!("status is complete but rows {} are not covered", show_ranges(&missing)));
        }
    }
    Ok((m, problems, stats))
}

fn show_ranges(r: &[ranges::Range]) -> String {
    let parts: Vec<String> = r.iter().take(5).map(|(a, b)| format!("{a}..{b}")).collect();
    if r.len() > 5 {
        format!("{} and {} more ranges", parts.join(", "), r.len() - 5)
    } else {
        parts.join(", ")
    }
}

/// `chatspace-mpi verify`: every manifest the argument names (see [`manifests_in`]); exit 1 if any fails.
pub fn verify_command(path: &Path, jobs: usize) -> i32 {
    match manifests_in(path) {
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::EXIT_FAILED
        }
        Ok(manifests) => manifests.iter().map(|m| verify_one(m, jobs)).fold(crate::exit::EXIT_OK, i32::max),
    }
}

/// The manifests a `status` or `verify` argument names: a file itself, or every `manifest-*.json` in a folder
/// (an output root, then its `indexes/` is searched; an `indexes/M/D` folder), in path order. Links are not
/// followed.
pub fn manifests_in(path: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let start = if path.join("indexes").is_dir() { path.join("indexes") } else { path.to_path_buf() };
    let mut found = Vec::new();
    let mut folders = vec![(start, 0)];
    while let Some((dir, depth)) = folders.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let (p, kind) = (entry.path(), entry.file_type().map_err(|e| format!("{}: {e}", entry.path().display()))?);
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() && depth < 2 {
                folders.push((p, depth + 1));
            } else if kind.is_file() && name.starts_with("manifest-") && name.ends_with(".json") {
                found.push(p);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(format!("{}: no manifest-*.json in this folder (give a manifest, an output root or its indexes/M/D folder)", path.display()));
    }
    Ok(found)
}

/// Checks one manifest, printing `ok: ...` or its problems; the exit code.
fn verify_one(manifest: &Path, jobs: usize) -> i32 {
    match verify(manifest, jobs, true) {
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::EXIT_FAILED
        }
        Ok((m, problems, stats)) if problems.is_empty() => {
            if let Some((line, bytes)) = m.log.torn {
                println!(
                    "note: line {line} of the shard log ({bytes} bytes) was torn by a crash before its commit counted; --resume redoes its rows"
                );
            }
            println!(
                "ok: {} shards, {} rows embedded, {} skipped, {}/{} rows covered, status {}; {:.1} MB hashed in {:.2}s ({:.0} MB/s, {} jobs)",
                m.num_shards,
                m.rows_embedded,
                m.rows_skipped,
                m.rows_done(),
                m.rows_total,
                status_name(m.status),
                stats.bytes as f64 / 1e6,
                stats.seconds,
                stats.bytes as f64 / 1e6 / stats.seconds.max(1e-9),
                stats.jobs
            );
            crate::exit::EXIT_OK
        }
        Ok((_, problems, _)) => {
            eprintln!("error: {} problem(s) in {}:", problems.len(), manifest.display());
            for p in &problems {
                eprintln!("  {p}");
            }
            crate::exit::EXIT_FAILED
        }
    }
}

pub(crate) fn status_name(s: Status) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Human-readable state of a run.
pub fn status_text(m: &Manifest) -> String {
    let done = m.rows_done();
    let left = m.rows_total.saturating_sub(done);
    let mut out = format!(
        "status: {}\nrows: {done}/{} done ({:.1}%), {} embedded, {} skipped, {left} remaining\nshards: {}\nruns: {}\n",
        status_name(m.status),
        m.rows_total,
        100.0 * done as f64 / m.rows_total.max(1) as f64,
        m.rows_embedded,
        m.rows_skipped,
        m.num_shards,
        m.runs.len()
    );
    for (i, r) in m.runs.iter().enumerate() {
        let rate = if r.duration_seconds > 0.0 { r.rows_embedded as f64 / r.duration_seconds } else { 0.0 };
        out += &format!(
            "  {}. {} start {} end {} world_size {} restart {} exit {} rows {} in {:.1}s ({rate:.1} rows/s, first batch after {}){}\n",
            i + 1,
            r.run_id,
            r.started_at,
            r.ended_at.as_deref().unwrap_or("-"),
            r.world_size,
            r.restart_count.map_or("-".to_string(), |c| c.to_string()),
            r.exit.as_deref().unwrap_or("none (still running, or killed)"),
            r.rows_embedded,
            r.duration_seconds,
            r.first_batch_seconds.map_or("-".to_string(), |s| format!("{s:.1}s")),
            match (&r.deadline, r.drain_estimate_seconds) {
                (Some(d), Some(e)) => format!(" job end {d}, drain estimate {e:.1}s"),
                (Some(d), None) => format!(" job end {d}"),
                _ => String::new(),
            }
        );
    }
    if let Some(hosts) = m.runs.last().map(|r| hosts_line(&r.ranks)).filter(|h| !h.is_empty()) {
        out += &format!("ranks (last run): {hosts}\n");
    }
    let cut = rows_truncated(m);
    if cut > 0 {
        if m.fingerprint.long_text == crate::cli::LongText::Chunk {
            out += &format!("rows longer than max_seq_length {}: {cut} (embedded in windows, --long-text chunk)\n", m.fingerprint.max_seq_length);
        } else {
            out +=
                &format!("rows cut at max_seq_length {}: {cut} (their text past the limit is not in the embedding)\n", m.fingerprint.max_seq_length);
        }
    }
    match last_rate(m) {
        Some(rate) => out += &format!("throughput (last run): {rate:.1} rows/s\nestimated time left: {}\n", crate::walltime::hms(left as f64 / rate)),
        None => out += "throughput (last run): unknown\nestimated time left: unknown\n",
    }
    out
}

/// "node1: 0 controller, 1 loader 0; node2: 2 encoder 0": each host's ranks and their roles, hosts in the
/// order of their first rank.
pub fn hosts_line(ranks: &[crate::manifest::RankPlace]) -> String {
    let mut hosts: Vec<(&str, Vec<String>)> = Vec::new();
    for r in ranks.iter().filter(|r| !r.host.is_empty()) {
        let entry = format!("{} {}", r.rank, r.roles.join(" + "));
        match hosts.iter_mut().find(|(h, _)| *h == r.host) {
            Some((_, v)) => v.push(entry),
            None => hosts.push((&r.host, vec![entry])),
        }
    }
    hosts.iter().map(|(h, v)| format!("{h}: {}", v.join(", "))).collect::<Vec<_>>().join("; ")
}

/// Rows cut at the model's length when the runs tokenized them (a chunk re-read after an interruption counts
/// again).
pub fn rows_truncated(m: &Manifest) -> u64 {
    m.runs.iter().map(|r| r.rows_truncated).sum()
}

/// Rows per second of the last run that embedded any.
fn last_rate(m: &Manifest) -> Option<f64> {
    m.runs.iter().rev().find(|r| r.duration_seconds > 0.0 && r.rows_embedded > 0).map(|r| r.rows_embedded as f64 / r.duration_seconds)
}

/// `status --json`: the run's state as one JSON object.
pub fn status_json(manifest: &Path, m: &Manifest) -> serde_json::Value {
    let left = m.rows_total.saturating_sub(m.rows_done());
    let rate = last_rate(m);
    serde_json::json!({
        "manifest": manifest.display().to_string(),
        "status": status_name(m.status),
        "dataset": m.dataset, "subset": m.subset, "split": m.split, "model": m.model,
        "rows_total": m.rows_total, "rows_done": m.rows_done(), "rows_embedded": m.rows_embedded,
        "rows_skipped": m.rows_skipped, "rows_left": left, "shards": m.num_shards, "runs": m.runs.len(),
        "updated_at": m.updated_at, "rows_per_second": rate, "eta_seconds": rate.map(|r| (left as f64 / r).round()),
        "rows_truncated": rows_truncated(m), "error": m.error,
        "ranks": m.runs.last().map_or(serde_json::Value::Null, |r| serde_json::json!(r.ranks)),
    })
}

/// `chatspace-mpi status`: every manifest the argument names (see [`manifests_in`]), as text or one JSON line
/// each; exit 1 if any cannot be read.
pub fn status_command(path: &Path, json: bool) -> i32 {
    let manifests = match manifests_in(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::EXIT_FAILED;
        }
    };
    let mut code = crate::exit::EXIT_OK;
    for (i, manifest) in manifests.iter().enumerate() {
        match Manifest::read(manifest) {
            Ok(m) if json => println!("{}", status_json(manifest, &m)),
            Ok(m) => print!("{}manifest: {}\n{}", if i > 0 { "\n" } else { "" }, manifest.display(), status_text(&m)),
            Err(e) => {
                eprintln!("error: {e}");
                code = crate::exit::EXIT_FAILED;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_progress_and_time_left() {
        let mut m = crate::manifest::tests_support::empty_manifest();
        m.rows_total = 100;
        m.status = Status::Preempted;
        m.runs.push(crate::manifest::RunRecord {
            run_id: "r1".into(),
            started_at: "a".into(),
            ended_at: Some("b".into()),
            world_size: 4,
            layout: String::new(),
            exit: Some("preempted: SIGUSR1 on rank 0".into()),
            restart_count: Some(1),
            rows_embedded: 40,
            duration_seconds: 4.0,
            first_batch_seconds: Some(1.5),
            deadline: Some("2026-11-27T12:00:00.000Z".into()),
            drain_estimate_seconds: Some(2.5),
            ranks: vec![
                crate::manifest::RankPlace { rank: 0, host: "node1".into(), roles: vec!["controller".into()] },
                crate::manifest::RankPlace { rank: 1, host: "node2".into(), roles: vec!["loader 0".into(), "writer 0".into()] },
                crate::manifest::RankPlace { rank: 2, host: "node1".into(), roles: vec!["encoder 0".into()] },
            ],
            ..Default::default()
        });
        m.count_shard(&crate::manifest::tests_support::shard(0, 0, vec![(0, 40)], 2));
        let t = status_text(&m);
        assert!(t.contains("rows: 40/100 done (40.0%)"), "{t}");
        assert!(t.contains("60 remaining"), "{t}");
        assert!(t.contains("world_size 4 restart 1"), "{t}");
        assert!(t.contains("ranks (last run): node1: 0 controller, 2 encoder 0; node2: 1 loader 0 + writer 0\n"), "{t}");
        assert!(t.contains("job end 2026-11-27T12:00:00.000Z, drain estimate 2.5s"), "{t}");
        assert!(t.contains("10.0 rows/s") && t.contains("estimated time left: 0:00:06"), "{t}");
        assert!(!t.contains("rows cut"), "none cut: {t}");
        m.runs[0].rows_truncated = 7;
        assert!(status_text(&m).contains(": 7 (their text past the limit"), "{}", status_text(&m));
        assert_eq!(status_json(Path::new("m.json"), &m)["rows_truncated"], 7);
    }
}
