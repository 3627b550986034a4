//! Many nodes, on an emulated cluster of three (scripts/multinode-cluster.sh: each node its own network
//! namespace, hostname, /tmp and slurmd): `sbatch -N 2` and `mpirun --host` across nodes equal a one-node run;
//! a job preempted twice (the warning signal, `scontrol requeue`) resumes on another node set; a node whose
//! link goes down, or whose ranks are killed, ends the job with an error naming the lost rank and host, and
//! the next job completes the output. Needs root (network namespaces), as CI has.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chatspace_mpi::manifest::{Manifest, Status};
use common::slurm::Slurm;
use common::*;

/// A cluster in its own folder under target/ (the nodes see the checkout; each has its own /tmp), brought
/// down when dropped; its clients through [`Slurm`], with the Open MPI launch agent for `mpirun --host`.
struct Cluster {
    slurm: Slurm,
}

impl std::ops::Deref for Cluster {
    type Target = Slurm;
    fn deref(&self) -> &Slurm {
        &self.slurm
    }
}

impl Cluster {
    fn start(name: &str, nodes: usize) -> Cluster {
        let dir = root().join("target/multinode-tests").join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let o = script(&dir).args(["start", &nodes.to_string()]).output().unwrap();
        assert!(o.status.success(), "cluster start: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        let exports = String::from_utf8_lossy(&o.stdout).into_owned();
        let value = |key: &str| exports.lines().find_map(|l| l.strip_prefix(&format!("export {key}=")).map(PathBuf::from)).unwrap();
        let env = vec![("OMPI_MCA_plm_rsh_agent".to_string(), value("OMPI_MCA_plm_rsh_agent"))];
        Cluster { slurm: Slurm { conf: value("SLURM_CONF"), dir: dir.join("work"), env } }
    }

    /// Submits slurm/embed.sbatch with progress every 2 s and LAUNCHER_GRACE 20 s; returns the job id.
    fn submit(&self, name: &str, data: &Path, out: &Path, sbatch: &[&str], embed: &str, env: &[(&str, &str)]) -> String {
        let mut all = vec![("PROGRESS_INTERVAL", "2"), ("LAUNCHER_GRACE", "20")];
        all.extend_from_slice(env);
        self.slurm.submit(name, data, out, sbatch, embed, &all)
    }

    fn node_state(&self, node: &str, state: &str) {
        let mut args = vec!["update".to_string(), format!("NodeName={node}"), format!("State={state}")];
        if state == "DRAIN" {
            args.push("Reason=maintenance".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("scontrol", &args);
    }

    /// A node's link back up and the node back in service (Slurm marks a node it lost DOWN).
    fn heal(&self, node: &str) {
        let o = script(self.dir.parent().unwrap()).args(["link", node, "up"]).output().unwrap();
        assert!(o.status.success(), "link up: {}", stderr(&o));
        let start = Instant::now();
        loop {
            let _ = self.cmd("scontrol").args(["update", &format!("NodeName={node}"), "State=RESUME"]).output();
            let state = self.run("sinfo", &["-h", "-n", node, "-o", "%T"]);
            if state.trim() == "idle" {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{node} is {state} after healing");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = script(self.dir.parent().unwrap()).arg("down").status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir.parent().unwrap());
        }
    }
}

fn script(dir: &Path) -> Command {
    let mut c = Command::new(root().join("scripts/multinode-cluster.sh"));
    c.env("MULTINODE_DIR", dir);
    c
}

/// The chatspace-mpi processes running on `node` (in its network namespace).
fn rank_pids(cluster: &Cluster, node: &str) -> Vec<String> {
    let instance = std::fs::read_to_string(cluster.dir.parent().unwrap().join("instance")).unwrap();
    let pids = Command::new("ip").args(["netns", "pids", &format!("csmn{}-{node}", instance.trim())]).output().unwrap();
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains("(chatspace-mpi)") && !stat.contains(") Z ")
        })
        .map(String::from)
        .collect()
}

fn ranks_on(cluster: &Cluster, node: &str) -> usize {
    rank_pids(cluster, node).len()
}

/// Rows (by id) of a finished output, checked: complete, every row once, `verify` clean.
fn finished(out: &Path) -> (Manifest, BTreeMap<u64, Vec<f32>>) {
    verify_ok(out);
    let (m, rows) = read_output(out);
    check_complete(&m, &rows);
    (m, rows)
}

fn assert_same(what: &str, got: &BTreeMap<u64, Vec<f32>>, want: &BTreeMap<u64, Vec<f32>>) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: the same rows");
    let worst = got.iter().map(|(id, v)| max_abs_diff(v, &want[id])).fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "{what}: max abs diff {worst} from the one-node run");
}

/// The hosts of the last run's ranks, from its record.
fn hosts(m: &Manifest) -> Vec<String> {
    m.runs.last().unwrap().ranks.iter().map(|r| r.host.clone()).collect()
}

/// Waits until the output has `shards` committed shards.
fn wait_for_shards(out: &Path, shards: usize, what: &str) {
    let start = Instant::now();
    while !manifest_exists(out) || read_output(out).0.shards.len() < shards {
        assert!(start.elapsed() < Duration::from_secs(180), "{what}: no {shards} shards committed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn jobs_span_nodes_survive_preemption_and_end_on_node_faults() {
    let cluster = Cluster::start("main", 3);
    let sample = std::fs::read_to_string(root().join("data/sample.jsonl")).unwrap();
    let data = cluster.dir.join("data.jsonl");
    std::fs::write(&data, sample.repeat(2)).unwrap();
    // The one-node result everything is compared with.
    let one = cluster.dir.join("one-node");
    let o = embed_on(&data, &one).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, want) = finished(&one);

    // 1. sbatch -N 2 --ntasks-per-node 3: ranks on both nodes, each node loading for its own encoder.
    let out = cluster.dir.join("sbatch");
    let job = cluster.submit("sbatch", &data, &out, &["-N", "2", "--ntasks-per-node", "3", "--time=10"], "", &[]);
    let j = cluster.wait_final(&job, 300);
    let log = cluster.log("sbatch", &job);
    assert_eq!((j["JobState"].as_str(), j["ExitCode"].as_str()), ("COMPLETED", "0:0"), "{log}");
    let (m, rows) = finished(&out);
    assert_same("sbatch -N 2", &rows, &want);
    let run = m.runs.last().unwrap();
    assert_eq!(hosts(&m), vec!["node1", "node1", "node1", "node2", "node2", "node2"], "{:?}", run.ranks);
    assert_eq!(
        run.ranks.iter().map(|r| r.roles.join("+")).collect::<Vec<_>>(),
        vec!["controller", "loader 0", "encoder 0", "loader 1", "writer 0", "encoder 1"]
    );
    assert!(run.layout.contains("rank 5 on node2: encoder 1"), "{}", run.layout);
    let status = Command::new(bin()).args(["status"]).arg(&out).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("ranks (last run): node1: 0 controller, 1 loader 0, 2 encoder 0; node2: 3 loader 1, 4 writer 0, 5 encoder 1"),
        "{status}"
    );

    // 2. mpirun over TCP across three nodes, started from outside them (ssh stand-in as the launch agent).
    let out = cluster.dir.join("mpirun");
    let mut c = cluster.cmd("mpirun");
    c.args(["--host", "node1:2,node2:2,node3:2", "-n", "6", "--mca", "btl", "self,vader,tcp"]).arg(bin()).arg("embed");
    io_args(&mut c, &data, &out).arg("--no-progress").env("RUST_LOG", "warn");
    let o = run_limited(&mut c, 300);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = finished(&out);
    assert_same("mpirun --host", &rows, &want);
    assert_eq!(hosts(&m), vec!["node1", "node1", "node2", "node2", "node3", "node3"]);

    // 3. Preemption. A one-minute job (--time=1 --signal=B:USR1@20) whose first node is drained for
    //    maintenance gets Slurm's warning signal (or drains by itself as its end nears): every rank on both
    //    nodes drains, the script requeues the job, and it resumes on the other node set. There `scontrol
    //    requeue` preempts it again (SIGTERM to every rank); later starts complete it.
    let embed = "--batch-size 8 --rows-per-shard 40 --rank-timeout 10";
    let out = cluster.dir.join("preempt");
    let sbatch = ["-N", "2", "--ntasks-per-node", "3", "--time=1", "--signal=B:USR1@20"];
    let job = cluster.submit("preempt", &data, &out, &sbatch, embed, &[("CHATSPACE_TEST_DELAY", "encoder-batch:500")]);
    wait_for_shards(&out, 2, "preempt, first start");
    let first = hosts(&read_output(&out).0);
    cluster.node_state(&first[0], "DRAIN");
    let start = Instant::now();
    while read_output(&out).0.runs.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(180), "not requeued: {}", cluster.log("preempt", &job));
        cluster.start_requeued(&job);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (start, shards) = (Instant::now(), read_output(&out).0.shards.len());
    // Until the second start has committed shards of its own.
    while read_output(&out).0.runs.len() < 2 || read_output(&out).0.shards.len() < shards + 4 {
        assert!(start.elapsed() < Duration::from_secs(240), "not requeued: {}", cluster.log("preempt", &job));
        cluster.start_requeued(&job);
        std::thread::sleep(Duration::from_millis(300));
    }
    let second = hosts(&read_output(&out).0);
    assert!(!second.contains(&first[0]), "the requeued job avoided the drained {}: {second:?}", first[0]);
    cluster.node_state(&first[0], "RESUME");
    cluster.run("scontrol", &["requeue", &job]);
    let j = cluster.wait_final(&job, 600);
    let log = cluster.log("preempt", &job);
    assert_eq!(j["JobState"], "COMPLETED", "{j:?}\n{log}");
    assert!(j["Restarts"].parse::<u32>().unwrap() >= 2, "{j:?}");
    let (m, rows) = finished(&out);
    assert_same("preempted twice", &rows, &want);
    assert!(m.runs.len() >= 3, "{:?}", m.runs);
    for r in &m.runs[..m.runs.len() - 1] {
        assert!(r.exit.as_deref().unwrap_or("").starts_with("preempted"), "every start before the last drained: {:?}", r.exit);
    }
    assert!(log.contains("requeueing job"), "the script requeued itself after the warning signal: {log}");
    // Every rank on both nodes drained: no rank of the first start was killed.
    let first_start = &log[..log.find("restart 1").unwrap_or(log.len())];
    assert!(!first_start.contains("Killed") && !first_start.contains("exit code 1"), "{first_start}");
    assert!(
        first_start.contains("tasks 0-2: Exited with exit code 75") && first_start.contains("tasks 3-5: Exited with exit code 75"),
        "{first_start}"
    );

    // 4. Node faults: the second node's link goes down, or its ranks are killed, mid-run. The job ends
    //    (--rank-timeout 10, then the launcher is given LAUNCHER_GRACE 20 s), with the lost rank and host named
    //    in the manifest and the log; what was committed stays; the next job completes the output.
    let slow = [("CHATSPACE_TEST_DELAY", "encoder-batch:200")];
    for fault in ["link-down", "kill"] {
        let out = cluster.dir.join(fault);
        let job = cluster.submit(fault, &data, &out, &["-N", "2", "--ntasks-per-node", "3", "--time=10"], embed, &slow);
        wait_for_shards(&out, 2, fault);
        let m = read_output(&out).0;
        let victim = hosts(&m)[5].clone();
        assert_ne!(victim, hosts(&m)[0], "the controller's node stays up");
        let hit = Instant::now();
        match fault {
            "link-down" => {
                let o = script(cluster.dir.parent().unwrap()).args(["link", &victim, "down"]).output().unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
            }
            _ => {
                let mut killed = 0;
                for pid in rank_pids(&cluster, &victim) {
                    killed += Command::new("kill").args(["-9", &pid]).status().unwrap().success() as usize;
                }
                assert_eq!(killed, 3, "{victim}'s three ranks");
            }
        }
        // The batch script's last line says the job is over (Slurm may keep the job COMPLETING until it
        // gives up on the lost node).
        let bound = Duration::from_secs(10 + 20 + 30);
        let log = loop {
            let log = cluster.log(fault, &job);
            if log.contains("chatspace-embed: exit ") {
                break log;
            }
            assert!(hit.elapsed() < bound + Duration::from_secs(60), "{fault}: no end after {:?}: {log}", hit.elapsed());
            std::thread::sleep(Duration::from_millis(500));
        };
        let took = hit.elapsed();
        eprintln!("{fault}: the job ended {took:.1?} after the fault");
        if fault == "link-down" {
            // The cut-off node's ranks heard nothing from rank 0 for --rank-timeout and ended themselves.
            let start = Instant::now();
            while ranks_on(&cluster, &victim) > 0 {
                assert!(start.elapsed() < Duration::from_secs(30), "ranks still running on the cut-off {victim}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        assert!(took < bound, "{fault}: the job took {took:?} to end (bound {bound:?})");
        assert!(log.contains("chatspace-embed: exit 1 "), "{fault}: failed, not hung or preempted: {log}");
        let (m, _) = read_output(&out);
        assert_eq!(m.status, Status::Failed, "{fault}");
        let error = m.error.clone().unwrap_or_default();
        assert!(error.contains(&format!("on {victim}: lost")) && error.contains("rank "), "{fault}: {error}");
        assert!(log.contains(&error), "{fault}: the log names it too: {log}");
        verify_ok(&out);
        assert!(m.shards.len() >= 2, "committed shards kept");
        cluster.wait_final(&job, 180);
        if fault == "link-down" {
            cluster.heal(&victim);
        }
        // The next job (auto-resume) completes it.
        let job = cluster.submit(&format!("{fault}-resume"), &data, &out, &["-N", "2", "--ntasks-per-node", "3", "--time=10"], embed, &[]);
        let j = cluster.wait_final(&job, 300);
        assert_eq!(j["JobState"], "COMPLETED", "{fault}: {}", cluster.log(&format!("{fault}-resume"), &job));
        let (m, rows) = finished(&out);
        assert_same(fault, &rows, &want);
        assert_eq!(m.runs.len(), 2);
    }
}

#[test]
fn the_cluster_script_is_idempotent_and_leaves_nothing_behind() {
    let a = root().join("target/multinode-tests").join(format!("script-a-{}", std::process::id()));
    let b = root().join("target/multinode-tests").join(format!("script-b-{}", std::process::id()));
    // Both brought down however the test ends (a failed one left namespaces behind).
    struct Down<'a>(&'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = script(self.0).arg("down").status();
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _down = (Down(&a), Down(&b));
    let start = |dir: &Path| {
        let o = script(dir).args(["start", "2"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(dir.join("instance")).unwrap().trim().to_string()
    };
    // Two folders started at once (as the test beside this one does) claim two instances.
    let (ia, ib) = std::thread::scope(|s| {
        let b = s.spawn(|| start(&b));
        (start(&a), b.join().unwrap())
    });
    assert_ne!(ia, ib, "a second copy in another folder is another instance");
    assert_eq!(start(&a), ia, "a second start of a running cluster keeps it");
    for (dir, i) in [(&a, &ia), (&b, &ib)] {
        let conf = dir.join("etc/slurm.conf");
        let nodes = Command::new("sinfo").args(["-h", "-N", "-o", "%N %T"]).env("SLURM_CONF", &conf).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&nodes.stdout), "node1 idle\nnode2 idle\n", "instance {i}");
        // Each node is its own host.
        let o = script(dir).args(["exec", "node2", "hostname"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "node2");
    }
    // A folder deleted before its `down` leaves a stale claim and its namespaces; the next start takes the
    // number over (a, b and the test beside this one hold the lower ones) and clears what was left.
    let c = root().join("target/multinode-tests").join(format!("script-c-{}", std::process::id()));
    let d = root().join("target/multinode-tests").join(format!("script-d-{}", std::process::id()));
    let _down_cd = (Down(&c), Down(&d));
    let ic = start(&c);
    let stale_holder = std::fs::read_to_string(c.join("run/holder-node1.pid")).unwrap();
    std::fs::remove_dir_all(&c).unwrap();
    assert_eq!(start(&d), ic, "the stale claim is taken over");
    let st = std::fs::read_to_string(format!("/proc/{}/stat", stale_holder.trim())).unwrap_or_default();
    assert!(st.is_empty() || st.contains(") Z "), "the stale cluster's node is still running: {st}");
    assert!(script(&d).arg("down").status().unwrap().success());
    let netns = || String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    let links = || String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).into_owned();
    for (dir, i) in [(&a, &ia), (&b, &ib)] {
        let holder = std::fs::read_to_string(dir.join("run/holder-node1.pid")).unwrap();
        assert!(script(dir).arg("down").status().unwrap().success());
        assert!(script(dir).arg("down").status().unwrap().success(), "down twice is fine");
        assert!(!netns().contains(&format!("csmn{i}-")), "namespaces of instance {i} left: {}", netns());
        assert!(!links().contains(&format!("csmn{i}")), "links of instance {i} left");
        let st = std::fs::read_to_string(format!("/proc/{}/stat", holder.trim())).unwrap_or_default();
        assert!(st.is_empty() || st.contains(") Z "), "node holder still running: {st}");
    }
}
