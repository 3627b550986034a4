//! slurm/embed.sbatch on a real single-node Slurm cluster (munged + slurmctld + slurmd, started by
//! scripts/slurm-cluster.sh): completion, time-limit checkpoint + self-requeue + resume, scancel, srun and
//! mpirun launches; and a golden test of the script's header.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::slurm::Slurm;
use common::*;

#[test]
fn sbatch_header_is_the_documented_one() {
    let text = std::fs::read_to_string(root().join("slurm/embed.sbatch")).unwrap();
    let header: Vec<&str> = text.lines().filter(|l| l.starts_with("#SBATCH") || l.starts_with("##SBATCH")).collect();
    assert_eq!(
        header,
        vec![
            "#SBATCH --job-name=chatspace-embed",
            "#SBATCH --nodes=1",
            "#SBATCH --ntasks-per-node=4",
            "#SBATCH --time=04:00:00",
            "#SBATCH --signal=B:USR1@300",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            "#SBATCH --output=chatspace-embed-%j.log",
            "##SBATCH --gpus-per-node=4",
            "##SBATCH --partition=preemptible",
        ]
    );
    assert!(text.starts_with("#!/bin/bash\n"));
    // Every #SBATCH line comes before the first command, or Slurm ignores it.
    let first_command = text.lines().position(|l| !l.is_empty() && !l.starts_with('#')).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last_sbatch = lines.iter().rposition(|l| l.starts_with("#SBATCH")).unwrap();
    assert!(last_sbatch < first_command);
}

/// A private cluster for this test run, stopped when dropped; its clients through [`Slurm`].
struct Cluster {
    dir: tempfile::TempDir,
    slurm: Slurm,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new(root().join("scripts/slurm-cluster.sh")).arg("start").env("SLURM_LOCAL_DIR", dir.path().join("slurm")).output().unwrap();
        assert!(o.status.success(), "cluster start failed: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        let slurm = Slurm { conf: dir.path().join("slurm/slurm.conf"), dir: dir.path().to_path_buf(), env: Vec::new() };
        Cluster { dir, slurm }
    }

    /// Submits slurm/embed.sbatch with `LAUNCHER=launcher`; returns the job id.
    fn submit(&self, name: &str, data: &Path, out: &Path, launcher: &str, sbatch: &[&str], embed: &str) -> String {
        self.slurm.submit(name, data, out, sbatch, embed, &[("LAUNCHER", launcher)])
    }
}

impl std::ops::Deref for Cluster {
    type Target = Slurm;
    fn deref(&self) -> &Slurm {
        &self.slurm
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm-cluster.sh")).arg("stop").env("SLURM_LOCAL_DIR", self.dir.path().join("slurm")).status();
    }
}

fn dataset(dir: &Path, copies: usize) -> PathBuf {
    let sample = std::fs::read_to_string(root().join("data/sample.jsonl")).unwrap();
    let p = dir.join(format!("data-{copies}.jsonl"));
    std::fs::write(&p, sample.repeat(copies)).unwrap();
    p
}

#[test]
fn sbatch_jobs_complete_checkpoint_requeue_and_cancel_on_a_real_cluster() {
    let cluster = Cluster::start();
    // A second cluster beside it (another folder) takes other ports; both answer.
    {
        let other = Cluster::start();
        let port = |c: &Cluster| std::fs::read_to_string(&c.conf).unwrap().lines().find_map(|l| l.strip_prefix("SlurmctldPort=").map(str::to_string));
        assert_ne!(port(&cluster), port(&other));
        assert!(other.run("sinfo", &["-h", "-o", "%T"]).contains("idle"));
        assert!(cluster.run("sinfo", &["-h", "-o", "%T"]).contains("idle"));
    }
    let work = tempfile::tempdir().unwrap();
    let small = dataset(work.path(), 1);
    let big = dataset(work.path(), 4);
    let embed = "--rows-per-shard 100 --batch-size 16";

    // 1. A job completes, launched with srun --mpi=pmix (the default) and with mpirun.
    for launcher in ["srun", "mpirun"] {
        let out = work.path().join(format!("out-{launcher}"));
        let job = cluster.submit(launcher, &small, &out, launcher, &["--time=10"], embed);
        let j = cluster.wait_final(&job, 300);
        let log = cluster.log(launcher, &job);
        assert_eq!(j["JobState"], "COMPLETED", "{launcher}: {j:?}\n{log}");
        assert_eq!(j["ExitCode"], "0:0");
        verify_ok(&out);
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        assert_eq!(m.runs[0].world_size, 4, "{launcher}: 4 tasks, 4 ranks");
        // The job log has timestamped progress (at least the closing one).
        assert!(log.lines().any(|l| l.starts_with("progress: 20") && l.contains("Z ") && l.contains(" rows (100.0%)")), "{launcher}: {log}");
    }

    // 2. A one-minute time limit: the warning signal (or the run's own deadline) checkpoints it, the script
    //    requeues it, the next start resumes, until it completes.
    let out = work.path().join("out-requeue");
    let job = cluster.submit("requeue", &big, &out, "srun", &["--time=1", "--signal=B:USR1@20"], embed);
    let j = cluster.wait_final(&job, 900);
    let log = cluster.log("requeue", &job);
    assert_eq!(j["JobState"], "COMPLETED", "{j:?}\n{log}");
    assert!(j["Restarts"].parse::<u32>().unwrap() >= 1, "{j:?}\n{log}");
    assert!(log.contains("requeueing job"), "{log}");
    verify_ok(&out);
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert!(m.runs.len() >= 2);
    assert!(m.runs.iter().any(|r| r.restart_count.unwrap_or(0) >= 1), "SLURM_RESTART_COUNT recorded");
    assert!(m.runs[..m.runs.len() - 1].iter().all(|r| r.exit.as_deref().unwrap_or("").starts_with("preempted")), "{:?}", m.runs);
    assert!(m.runs.iter().all(|r| r.deadline.is_some()), "the job's end time is known to every run");

    // 3. scancel mid-run: checkpointed, resumable, not requeued.
    let out = work.path().join("out-cancel");
    let job = cluster.submit("cancel", &big, &out, "srun", &["--time=10"], embed);
    let start = Instant::now();
    while !manifest_exists(&out) || read_output(&out).0.shards.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "no shard committed: {}", cluster.log("cancel", &job));
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.run("scancel", &[&job]);
    let j = cluster.wait_final(&job, 120);
    std::thread::sleep(Duration::from_secs(3));
    let j2 = cluster.job(&job);
    let log = cluster.log("cancel", &job);
    assert_eq!(j["JobState"], "CANCELLED", "{j:?}\n{log}");
    assert_eq!(j2["JobState"], "CANCELLED", "a cancelled job is not requeued: {j2:?}");
    assert_eq!(j2["Restarts"], "0");
    assert!(!log.contains("requeueing"), "{log}");
    verify_ok(&out);
    let (m, _) = read_output(&out);
    assert_ne!(m.status, chatspace_mpi::manifest::Status::Complete, "cancelled early");
    // Resumable: a plain resume completes it (once the cancelled job's ranks have let go of the output).
    let start = Instant::now();
    loop {
        let mut c = embed_cmd();
        c.arg("--dataset").arg(&big).arg("--model").arg(model()).arg("--output-root").arg(&out).args([
            "--resume",
            "--no-progress",
            "--rows-per-shard",
            "100",
        ]);
        let o = run_limited(&mut c, 600);
        if o.status.success() {
            break;
        }
        assert!(stderr(&o).contains("in use by another run") && start.elapsed() < Duration::from_secs(60), "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(500));
    }
    verify_ok(&out);
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
}
