//! Preemption with real processes and real signals: interrupted runs, resumed (with other rank counts)
//! until complete, give exactly the rows and embeddings of an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Deterministic pseudo-random numbers (seed from CHATSPACE_TEST_SEED, printed for reruns).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn args(cmd: &mut Command, data: &Path, out: &Path) {
    cmd.arg("--dataset").arg(data).arg("--model").arg(model()).arg("--output-root").arg(out);
    cmd.args(["--rows-per-shard", "40", "--batch-size", "8", "--no-progress", "--drain-timeout", "8"]);
}

/// How a run is launched: a plain process or mpirun with n ranks.
fn launch(ranks: Option<usize>, data: &Path, out: &Path, resume: bool) -> Child {
    let mut cmd = match ranks {
        Some(n) => mpirun_cmd(n),
        None => embed_cmd(),
    };
    args(&mut cmd, data, out);
    if resume {
        cmd.arg("--resume");
    }
    // Shards sit renamed-but-uncommitted for a while: kills often land in that window.
    cmd.env("CHATSPACE_TEST_DELAY", "writer-commit:150");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().expect("spawn")
}

fn wait(child: &mut Child, secs: u64) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("run did not end within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep").arg("-P").arg(pid.to_string()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[derive(Debug, Clone, Copy)]
enum Interrupt {
    /// SIGUSR1 to mpirun (forwarded to every rank), or to the plain process.
    Usr1,
    /// SIGTERM to one rank (or the plain process).
    TermRank,
    /// SIGINT to the plain process / SIGTERM to mpirun (which kills its ranks ~2 s later).
    TermLauncher,
    /// SIGKILL to one rank.
    KillRank,
    /// SIGKILL to mpirun (and, as a scheduler would, to what it leaves behind).
    KillLauncher,
    /// A signal, then a second one (over a second later) during the drain.
    Twice,
}

fn interrupt(child: &mut Child, ranks: Option<usize>, how: Interrupt, rng: &mut Rng) -> Option<i32> {
    let pid = child.id();
    let ranks_pids = || {
        let mut kids = children(pid);
        kids.sort();
        kids
    };
    let pick = |rng: &mut Rng| {
        let kids = ranks_pids();
        if ranks.is_none() || kids.is_empty() {
            pid
        } else {
            kids[rng.next(kids.len() as u64) as usize]
        }
    };
    match how {
        Interrupt::Usr1 => kill("USR1", pid),
        Interrupt::TermRank => kill("TERM", pick(rng)),
        Interrupt::TermLauncher => kill(if ranks.is_some() { "TERM" } else { "INT" }, pid),
        Interrupt::KillRank => kill("KILL", pick(rng)),
        Interrupt::KillLauncher => {
            let kids = ranks_pids();
            kill("KILL", pid);
            for k in kids {
                kill("KILL", k);
            }
        }
        Interrupt::Twice => {
            kill("USR1", pid);
            // Signals within a second count once; a second one after that stops the drain at once.
            std::thread::sleep(Duration::from_millis(1100 + rng.next(600)));
            kill("USR1", pid);
        }
    }
    let (code, err) = wait(child, 90);
    // A graceful drain ends with the resumable code, never with a plain error.
    if matches!(how, Interrupt::Usr1 | Interrupt::Twice) || (ranks.is_none() && matches!(how, Interrupt::TermRank | Interrupt::TermLauncher)) {
        assert!(code == Some(75) || code == Some(0), "{how:?} with {ranks:?}: exit {code:?}: {err}");
    }
    code
}

#[test]
fn interrupted_runs_resume_to_the_uninterrupted_result() {
    let seed: u64 = std::env::var("CHATSPACE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261127);
    eprintln!("CHATSPACE_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_mixed_dataset(&data, 200);

    let base_out = dir.path().join("baseline");
    let mut base = launch(None, &data, &base_out, false);
    let (code, err) = wait(&mut base, 300);
    assert_eq!(code, Some(0), "{err}");
    let (bm, baseline) = read_output(&base_out);
    check_complete(&bm, &baseline);

    let kinds = [Interrupt::Usr1, Interrupt::TermRank, Interrupt::TermLauncher, Interrupt::KillRank, Interrupt::KillLauncher, Interrupt::Twice];
    let launchers = [None, Some(2), Some(3), Some(4), Some(5)];
    let mut interrupts = 0;
    let mut chain = 0;
    while interrupts < 20 {
        chain += 1;
        let out: PathBuf = dir.path().join(format!("chain-{chain}"));
        let mut resume = false;
        let mut unfinished = false;
        // Up to 5 interruptions per chain, then run to completion.
        for _ in 0..5 {
            let ranks = launchers[rng.next(launchers.len() as u64) as usize];
            let how = kinds[rng.next(kinds.len() as u64) as usize];
            // Early (model loading, before the first commit) to late (mid-shard, in commits, in drains).
            let delay = Duration::from_millis(rng.next(4500));
            let launched = std::time::SystemTime::now();
            let mut child = launch(ranks, &data, &out, resume);
            // Signals are handled from the start of each rank's main(); before that (exec, dynamic loading)
            // nothing can catch them. Count the delay from when the run has started (its manifest written).
            wait_started(&mut child, &out, launched);
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_some() {
                let (code, err) = wait(&mut child, 10);
                assert!(code == Some(0), "{ranks:?} ended by itself with {code:?}: {err}");
                break; // finished before the interrupt
            }
            let code = interrupt(&mut child, ranks, how, &mut rng);
            interrupts += 1;
            eprintln!("chain {chain}: {how:?} after {delay:?} on {ranks:?} -> exit {code:?}");
            if manifest_exists(&out) {
                verify_ok(&out);
                resume = true;
                // A run can be killed after it committed its last shard (while it exits): then the next
                // launch finds the output complete and records no resume.
                unfinished |= read_output(&out).0.status != chatspace_mpi::manifest::Status::Complete;
            }
        }
        // Finish (several resumes may be needed if this run is also interrupted; here it is not).
        let ranks = launchers[rng.next(launchers.len() as u64) as usize];
        let mut child = launch(ranks, &data, &out, resume);
        let (code, err) = wait(&mut child, 300);
        assert_eq!(code, Some(0), "final resume on {ranks:?}: {err}");
        verify_ok(&out);
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        assert_eq!(rows.keys().collect::<Vec<_>>(), baseline.keys().collect::<Vec<_>>(), "chain {chain}: row ids differ");
        for (id, v) in &rows {
            assert!(max_abs_diff(v, &baseline[id]) <= 1e-5, "chain {chain}: row {id} differs");
        }
        assert!(m.runs.len() >= 2 || !unfinished, "chain {chain}: an interrupted run left work, so a resume is recorded");
    }
}

/// Waits until this launch has written its manifest (every rank is past MPI_Init, handlers installed).
fn wait_started(child: &mut Child, out: &Path, launched: std::time::SystemTime) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        let fresh = manifest_exists(out) && std::fs::metadata(manifest_path(out)).and_then(|m| m.modified()).is_ok_and(|t| t >= launched);
        if fresh {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each way a resume could lose or duplicate rows is refused with a clear line, and nothing is written.
#[test]
fn resume_refuses_what_would_lose_or_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_mixed_dataset(&data, 40);
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut c = embed_cmd();
        args(&mut c, &data, &out);
        c.args(extra);
        let o = run_limited(&mut c, 120);
        (o.status.code(), stderr(&o))
    };
    assert_eq!(run(&[]).0, Some(0));
    let mp = manifest_path(&out);
    let (m, _) = read_output(&out);
    let shard = mp.parent().unwrap().join(&m.shards[1].path);
    let pristine = std::fs::read(&mp).unwrap();
    let snapshot = |p: &Path| std::fs::read(p).unwrap();

    let (code, e) = run(&["--resume"]);
    assert_eq!(code, Some(0));
    assert!(e.contains("already complete"), "{e}");

    // Other settings.
    let (code, e) = run(&["--resume", "--max-rows", "50"]);
    assert!(code == Some(1) && e.contains("other settings") && e.contains("max_rows") && e.contains("files"), "{e}");

    // A tampered shard (same size, one byte changed): `verify` hashes every shard and catches it; resume
    // checks sizes and footers only (metadata time), so it goes on.
    let good = snapshot(&shard);
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&shard, &bad).unwrap();
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    assert!(!v.status.success() && stderr(&v).contains("sha256"), "{}", stderr(&v));
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(0) && e.contains("already complete"), "{e}");
    assert_eq!(snapshot(&shard), bad, "resume leaves committed files alone");

    // A shard whose footer a lost write destroyed (same size): refused.
    let mut torn = good.clone();
    let n = torn.len();
    torn[n - 8..].fill(0);
    std::fs::write(&shard, &torn).unwrap();
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(1) && e.contains(&m.shards[1].path) && e.contains("no valid Parquet footer"), "{e}");
    assert_eq!(snapshot(&shard), torn, "a refused resume leaves files alone");

    // A shard of another size.
    std::fs::write(&shard, &good[..n - 1]).unwrap();
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(1) && e.contains("does not match the manifest") && e.contains(&format!("{} bytes", n - 1)), "{e}");

    // A deleted shard.
    std::fs::remove_file(&shard).unwrap();
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(1) && e.contains(&m.shards[1].path), "{e}");
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    assert!(!v.status.success() && stderr(&v).contains("cannot read"), "{}", stderr(&v));
    std::fs::write(&shard, &good).unwrap();

    // A shard path in the log edited to point outside the output root: the line no longer matches its check.
    let log = mp.parent().unwrap().join("shards-train.jsonl");
    let pristine_log = std::fs::read(&log).unwrap();
    let text = String::from_utf8(pristine_log.clone()).unwrap().replace(&m.shards[0].path, "../../../../../etc/passwd");
    std::fs::write(&log, text).unwrap();
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(1) && e.contains("does not match its check"), "{e}");
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    assert!(!v.status.success() && stderr(&v).contains("does not match its check"), "{}", stderr(&v));
    std::fs::write(&log, &pristine_log).unwrap();

    // A truncated manifest.
    std::fs::write(&mp, &pristine[..pristine.len() / 2]).unwrap();
    let (code, e) = run(&["--resume"]);
    assert!(code == Some(1) && e.contains("not a valid manifest"), "{e}");
    let v = Command::new(bin()).arg("verify").arg(&mp).output().unwrap();
    assert!(!v.status.success() && stderr(&v).contains("not a valid manifest"), "{}", stderr(&v));

    // Restored, everything is consistent again.
    std::fs::write(&mp, &pristine).unwrap();
    verify_ok(&out);
}
