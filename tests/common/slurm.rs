//! A Slurm client for the cluster tests (tests/slurm.rs, tests/multinode.rs): slurm/embed.sbatch submitted with
//! the real model, jobs watched until they end, requeued jobs started without Slurm's ~120 s wait.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{bin, model, root, stderr};

/// One cluster's clients: its `SLURM_CONF`, the folder job logs go to (and commands run in), and more
/// environment for every command.
pub struct Slurm {
    pub conf: PathBuf,
    pub dir: PathBuf,
    pub env: Vec<(String, PathBuf)>,
}

impl Slurm {
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf).current_dir(&self.dir);
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let o = self.cmd(program).args(args).output().unwrap();
        assert!(o.status.success(), "{program} {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Submits slurm/embed.sbatch on `data` with the real model, writing under `out`, its log `{name}-{job}.log`;
    /// returns the job id.
    pub fn submit<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &self,
        name: &str,
        data: &Path,
        out: &Path,
        sbatch: &[&str],
        embed: &str,
        env: &[(K, V)],
    ) -> String {
        let log = self.dir.join(format!("{name}-%j.log"));
        let mut c = self.cmd("sbatch");
        c.arg("--parsable").arg(format!("--output={}", log.display())).args(sbatch).arg(root().join("slurm/embed.sbatch"));
        c.env("DATASET", data).env("MODEL", model()).env("OUTPUT_ROOT", out).env("CHATSPACE_BIN", bin());
        c.env("EMBED_ARGS", embed).env("RUST_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "sbatch: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().split(';').next().unwrap().to_string()
    }

    pub fn log(&self, name: &str, job: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}-{job}.log"))).unwrap_or_default()
    }

    /// `scontrol show job` as key=value pairs.
    pub fn job(&self, job: &str) -> HashMap<String, String> {
        let text = self.run("scontrol", &["show", "job", "-o", job]);
        text.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Waits for a final state, starting a requeued job at once (see [`Slurm::start_requeued`]).
    pub fn wait_final(&self, job: &str, secs: u64) -> HashMap<String, String> {
        let start = Instant::now();
        loop {
            let j = self.job(job);
            let state = j.get("JobState").cloned().unwrap_or_default();
            match state.as_str() {
                "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" => return j,
                "PENDING" => self.start_requeued(job),
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "job {job} still {state} after {secs}s");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A requeued job waits for its BeginTime (~120 s): start it now, after the few seconds slurmd needs to
    /// clean up the previous start's step (the same step id would find its PMIx socket taken).
    pub fn start_requeued(&self, job: &str) {
        let j = self.job(job);
        if j.get("JobState").is_some_and(|s| s == "PENDING") && j.get("Reason").is_some_and(|r| r == "BeginTime") {
            std::thread::sleep(Duration::from_secs(5));
            let _ = self.cmd("scontrol").args(["update", &format!("JobId={job}"), "StartTime=now"]).status();
        }
    }
}
