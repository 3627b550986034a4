//! The checkpoint at scale and under damage: the whole pipeline in one process (no MPI), 20,000 shards with
//! bytes written per commit that do not grow and a resume that reads no shard data, a SIGKILLed run resumed
//! to a clean result, a torn log line, a tampered log line, and a version-1 manifest resumed and migrated.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatspace_mpi::manifest::{encode_line, Manifest, Status};
use common::*;

/// The small random Qwen3 fixture: real model files (hashed, read) for the no-op encoder, which ignores them.
fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/tiny-qwen3-embedding")
}

fn rows_file(path: &Path, n: usize) {
    let body: String = (0..n).map(|i| format!("{{\"text\":\"row number {i}\",\"n\":{i}}}\n")).collect();
    std::fs::write(path, body).unwrap();
}

fn noop_args(cmd: &mut Command, data: &Path, out: &Path, rows_per_shard: u64) {
    cmd.arg("--dataset").arg(data).arg("--model").arg(tiny_model()).arg("--output-root").arg(out);
    cmd.args(["--encoder", "noop", "--no-progress", "--batch-size", "64", "--rows-per-shard", &rows_per_shard.to_string()]);
}

/// Runs `cmd` under bash and returns its output and the I/O counters of /proc/PID/io (`rchar`, `wchar`,
/// `read_bytes`, `write_bytes`) of everything it ran: a shell's counters include its reaped children.
fn run_counted(cmd: &Command, secs: u64) -> (Output, HashMap<String, u64>) {
    let mut b = Command::new("bash");
    b.arg("-c").arg(r#""$@"; rc=$?; while read -r k v; do echo "io ${k%:} $v" >&2; done < /proc/$$/io; exit $rc"#).arg("bash");
    b.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => b.env(k, v),
            None => b.env_remove(k),
        };
    }
    let out = run_limited(&mut b, secs);
    let io = stderr(&out)
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("io ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect();
    (out, io)
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map_or(0, |d| d.flatten().map(|e| if e.file_type().unwrap().is_dir() { dir_bytes(&e.path()) } else { e.metadata().unwrap().len() }).sum())
}

fn log_path(out: &Path) -> PathBuf {
    let mp = manifest_path(out);
    mp.parent().unwrap().join(mp.file_name().unwrap().to_string_lossy().replace("manifest-", "shards-").replace(".json", ".jsonl"))
}

/// Every row id in 0..n exactly once (read_output asserts no row twice; check_complete that shards tile).
fn check_exactly_once(out: &Path, n: u64) {
    let (m, rows) = read_output(out);
    check_complete(&m, &rows);
    assert_eq!(rows.len() as u64, n);
    assert!(rows.keys().copied().eq(0..n), "every row id once");
}

#[test]
fn the_whole_pipeline_runs_in_one_process() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("d.jsonl");
    rows_file(&data, 1000);
    let out = d.path().join("out");
    let mut cmd = embed_cmd();
    noop_args(&mut cmd, &data, &out, 100);
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let cli = <chatspace_mpi::cli::Cli as clap::Parser>::parse_from(std::iter::once("chatspace-mpi".to_string()).chain(args));
    let chatspace_mpi::cli::Command::Embed(args) = cli.command else { unreachable!("embed was parsed") };
    let outcome = chatspace_mpi::embed_in_process(args.clone());
    assert_eq!((outcome.code, outcome.abort, outcome.error.as_deref()), (0, false, None));
    assert_eq!(outcome.manifest.as_deref(), Some(manifest_path(&out).as_path()));
    check_exactly_once(&out, 1000);
    let (m, problems, _) = chatspace_mpi::inspect::verify(&manifest_path(&out), 2, false).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!((m.num_shards, m.run_config.as_ref().map(|c| c.rows_per_shard)), (10, Some(100)));
    // Again, in place: refused as existing output, with the outcome saying so.
    let again = chatspace_mpi::embed_in_process(args);
    assert_eq!(again.code, 1);
    assert!(again.error.unwrap().contains("output already exists"));
}

/// 2,000 and 20,000 shards: bytes written per commit stay flat (and in all at most 3x the output), resuming
/// the complete run reads no shard data, and a run SIGKILLed mid-way resumes to every row exactly once.
#[test]
fn twenty_thousand_shards_cost_the_same_per_commit_and_resume_reads_no_shard_data() {
    let d = tempfile::tempdir().unwrap();
    let mut per_commit = Vec::new();
    for rows in [20_000u64, 200_000] {
        let data = d.path().join(format!("d{rows}.jsonl"));
        rows_file(&data, rows as usize);
        let out = d.path().join(format!("out{rows}"));
        let mut cmd = embed_cmd();
        noop_args(&mut cmd, &data, &out, 10);
        let (o, io) = run_counted(&cmd, 900);
        assert!(o.status.success(), "{}", stderr(&o));
        let output = dir_bytes(&out);
        let shards = rows / 10;
        assert_eq!(std::fs::read_to_string(log_path(&out)).unwrap().lines().count() as u64, shards);
        let header = std::fs::metadata(manifest_path(&out)).unwrap().len();
        assert!(header < 16 << 10, "the manifest header holds no shards: {header} bytes");
        let written = io["wchar"];
        eprintln!("{shards} shards: {written} bytes written for {output} bytes of output ({:.2}x)", written as f64 / output as f64);
        assert!(written <= 3 * output, "{shards} shards: {written} bytes written for {output} bytes of output");
        per_commit.push((written.saturating_sub(output)) as f64 / shards as f64);
        if rows == 200_000 {
            // Resuming the complete run: manifest, log, footers, input and model; no shard data.
            let mut resume = embed_cmd();
            noop_args(&mut resume, &data, &out, 10);
            resume.arg("--resume");
            let (o, io) = run_counted(&resume, 300);
            assert!(o.status.success() && stderr(&o).contains("already complete"), "{}", stderr(&o));
            let shard_bytes = dir_bytes(&out.join("embeddings"));
            let largest = 64 * 1024; // a shard of 10 rows of 64 floats is a few KiB
            let bound = std::fs::metadata(&data).unwrap().len()
                + std::fs::metadata(log_path(&out)).unwrap().len()
                + header
                + dir_bytes(&tiny_model())
                + chatspace_mpi::controller::FOOTER_CHECKS as u64 * largest
                + (4 << 20);
            eprintln!("resume of the complete run read {} bytes; shards hold {shard_bytes}", io["rchar"]);
            assert!(io["rchar"] <= bound && io["rchar"] < shard_bytes / 4, "resume read {} bytes (bound {bound}, shards {shard_bytes})", io["rchar"]);
            verify_ok(&out);
            check_exactly_once(&out, rows);
        }
    }
    // Per-commit overhead (bytes beyond the output) at 20,000 shards is that of 2,000, not ten times it.
    assert!(per_commit[1] <= 1.5 * per_commit[0] + 64.0, "bytes per commit grew: {per_commit:?}");

    // SIGKILL mid-run (commits slowed down so the kill lands mid-way), then resume to a clean result.
    let data = d.path().join("d20000.jsonl");
    let out = d.path().join("killed");
    let mut cmd = embed_cmd();
    noop_args(&mut cmd, &data, &out, 10);
    cmd.env("CHATSPACE_TEST_DELAY", "writer-commit:3").stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        let lines = std::fs::read(log_path_if_any(&out)).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        if lines >= 300 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed().as_secs() < 120, "no commits within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let m = Manifest::read(&manifest_path(&out)).unwrap();
    assert!(m.status == Status::Running && m.rows_done() < 20_000, "killed mid-run");
    let mut resume = embed_cmd();
    noop_args(&mut resume, &data, &out, 10);
    resume.arg("--resume");
    let o = run_limited(&mut resume, 300);
    assert!(o.status.success(), "{}", stderr(&o));
    verify_ok(&out);
    check_exactly_once(&out, 20_000);
    assert_eq!(Manifest::read(&manifest_path(&out)).unwrap().runs.len(), 2);
}

/// The log path under `out` once the run has made its index folder (a path that does not exist before).
fn log_path_if_any(out: &Path) -> PathBuf {
    let idx = out.join("indexes");
    let found = std::fs::read_dir(&idx).ok().and_then(|mut m| m.next()).and_then(|m| std::fs::read_dir(m.ok()?.path()).ok()?.next()?.ok());
    match found {
        Some(d) => d.path().join("shards-train.jsonl"),
        None => out.join("not-yet"),
    }
}

/// A small complete output to damage: 500 rows in 50 shards.
fn small_output(d: &Path) -> (PathBuf, PathBuf) {
    let data = d.join("d.jsonl");
    rows_file(&data, 500);
    let out = d.join("out");
    let mut cmd = embed_cmd();
    noop_args(&mut cmd, &data, &out, 10);
    let o = run_limited(&mut cmd, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    (data, out)
}

fn resume(data: &Path, out: &Path) -> (Option<i32>, String) {
    let mut cmd = embed_cmd();
    noop_args(&mut cmd, data, out, 10);
    cmd.arg("--resume");
    let o = run_limited(&mut cmd, 120);
    (o.status.code(), stderr(&o))
}

/// Rewrites the manifest header as it was before its last `n` commits counted (the header lags the log).
fn header_before_last_commits(mp: &Path, n: u64) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(mp).unwrap()).unwrap();
    v["status"] = "running".into();
    v["num_shards"] = (v["num_shards"].as_u64().unwrap() - n).into();
    std::fs::write(mp, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_torn_last_log_line_is_reported_and_its_rows_redone() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = small_output(d.path());
    let (mp, log) = (manifest_path(&out), log_path(&out));
    // A crash during the last commit's append: half its line is on disk, the header had not counted it.
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let torn_rows = serde_json::from_str::<serde_json::Value>(last).unwrap()["row_ranges"].clone();
    let torn = format!("{}{}", &text[..text.len() - last.len() - 1], &last[..last.len() / 2]);
    std::fs::write(&log, &torn).unwrap();
    header_before_last_commits(&mp, 1);
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success() && said.contains("torn by a crash"), "{said}{}", stderr(&v));
    let (code, e) = resume(&data, &out);
    assert_eq!(code, Some(0), "{e}");
    assert!(e.contains("line 50") && e.contains("torn by a crash") && e.contains("rows are redone"), "{e}");
    verify_ok(&out);
    check_exactly_once(&out, 500);
    let m = Manifest::read(&mp).unwrap();
    assert_eq!((m.num_shards, m.log.torn), (50, None));
    let redone = m.shards.last().unwrap();
    assert_eq!(serde_json::to_value(&redone.row_ranges).unwrap(), torn_rows, "the torn commit's rows went into a new shard");
    assert_eq!(m.runs.len(), 2);
}

#[test]
fn a_tampered_log_line_is_refused_and_nothing_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = small_output(d.path());
    let (mp, log) = (manifest_path(&out), log_path(&out));
    let pristine = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = pristine.lines().collect();
    // Line 7 claims another row count, as someone editing the log by hand might make it.
    let edited = lines[6].replacen("\"rows\":10", "\"rows\":9", 1);
    assert_ne!(edited, lines[6]);
    let mut tampered = lines.clone();
    tampered[6] = &edited;
    std::fs::write(&log, tampered.join("\n") + "\n").unwrap();
    let before = dir_bytes(&out);
    let (code, e) = resume(&data, &out);
    assert!(code == Some(1) && e.contains("shards-train.jsonl:7:") && e.contains("does not match its check"), "{e}");
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    assert!(!v.status.success() && stderr(&v).contains("shards-train.jsonl:7:"), "{}", stderr(&v));
    assert_eq!(dir_bytes(&out), before, "a refused resume changes nothing");
    // A line with a valid check that points outside the output root is refused by path.
    std::fs::write(&log, &pristine).unwrap();
    let mut entry = Manifest::read(&mp).unwrap().shards[3].clone();
    entry.path = "../../../../../etc/passwd".into();
    let mut outside: Vec<String> = pristine.lines().map(String::from).collect();
    outside[3] = String::from_utf8(encode_line(&entry)).unwrap().trim_end().to_string();
    std::fs::write(&log, outside.join("\n") + "\n").unwrap();
    let (code, e) = resume(&data, &out);
    assert!(code == Some(1) && e.contains("outside the output root"), "{e}");
    std::fs::write(&log, &pristine).unwrap();
    verify_ok(&out);
}

#[test]
fn a_version_one_manifest_resumes_and_moves_to_the_log() {
    let d = tempfile::tempdir().unwrap();
    let (data, out) = small_output(d.path());
    let (mp, log) = (manifest_path(&out), log_path(&out));
    // The same output as version 1 wrote it: every shard inside the manifest, no log; the last 5 shards
    // never committed (as after a preemption), their files left behind.
    let m = Manifest::read(&mp).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["format_version", "num_shards", "shard_log"] {
        o.remove(k);
    }
    o.insert("version".into(), 1.into());
    o.insert("status".into(), "preempted".into());
    o.insert("run_config".into(), serde_json::json!({"dataset": data, "no_progress": true}));
    let kept: Vec<_> = m.shards[..45].to_vec();
    o.insert("rows_embedded".into(), kept.iter().map(|s| s.rows).sum::<u64>().into());
    o.insert("shards".into(), serde_json::to_value(&kept).unwrap());
    std::fs::write(&mp, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    std::fs::remove_file(&log).unwrap();
    let s = Command::new(bin()).arg("status").arg(&mp).output().unwrap();
    assert!(s.status.success() && String::from_utf8_lossy(&s.stdout).contains("rows: 450/500 done"), "{}", String::from_utf8_lossy(&s.stdout));
    let (code, e) = resume(&data, &out);
    assert_eq!(code, Some(0), "{e}");
    verify_ok(&out);
    check_exactly_once(&out, 500);
    let header: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    assert_eq!((header["format_version"].as_u64(), header.get("shards").is_none(), header.get("version").is_none()), (Some(2), true, true));
    let back = Manifest::read(&mp).unwrap();
    assert_eq!(back.shards[..45], kept[..], "the version-1 shards head the log, unchanged");
    assert_eq!((back.num_shards, back.runs.len()), (50, 2));
}
