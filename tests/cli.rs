//! Command-line conventions other tools and operators rely on: possible values in help, `--version` naming the
//! commit, `status` and `verify` given a folder, `status --json`, and an output whose every `.json` file is JSON.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let o = run_limited(Command::new(bin()).args(args), 60);
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o))
}

/// A no-op-encoder run of `data` into `out` with extra flags; it must succeed.
fn noop_run(data: &Path, out: &Path, extra: &[&str]) {
    let mut c = embed_on(data, out);
    c.args(["--encoder", "noop", "--rows-per-shard", "10"]).args(extra);
    let o = run_limited(&mut c, 60);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn help_lists_possible_values_and_version_names_the_commit() {
    let (code, help, _) = cli(&["embed", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("[possible values: cpu, cuda, auto]"), "{help}");
    assert!(help.contains("[possible values: float32, float16, bfloat16, int8]"), "{help}");
    assert!(help.contains("org/name[@revision]"), "the Hub forms of --dataset and --model: {help}");
    // A value that is not one of them does not parse (exit 2), naming the flag and the values.
    let (code, _, e) = cli(&["embed", "--dataset", "d.jsonl", "--model", "m", "--device", "gpu"]);
    assert!(code == Some(2) && e.contains("--device") && e.contains("cpu, cuda, auto"), "{e}");
    let git = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(root()).output().unwrap();
    let head = String::from_utf8_lossy(&git.stdout).trim().to_string();
    let (code, version, _) = cli(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(!head.is_empty() && version.contains(&head), "--version names the commit {head}: {version}");
}

#[test]
fn status_and_verify_take_a_folder_and_status_speaks_json() {
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 25);
    let out = d.path().join("out");
    noop_run(&data, &out, &["--split", "train"]);
    let mp = manifest_path(&out);
    let out_s = out.to_str().unwrap();
    for target in [out_s, mp.parent().unwrap().to_str().unwrap(), mp.to_str().unwrap()] {
        let (code, text, e) = cli(&["status", target]);
        assert!(code == Some(0) && text.contains("status: complete") && text.contains("rows: 25/25"), "{target}: {text}{e}");
        let (code, text, e) = cli(&["verify", target]);
        assert!(code == Some(0) && text.contains("ok: 3 shards"), "{target}: {text}{e}");
    }
    let (code, json, e) = cli(&["status", "--json", mp.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{e}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["status"], "complete");
    assert_eq!((v["rows_total"].as_u64(), v["rows_done"].as_u64(), v["rows_embedded"].as_u64()), (Some(25), Some(25), Some(25)));
    assert_eq!((v["shards"].as_u64(), v["rows_left"].as_u64()), (Some(3), Some(0)));
    assert_eq!(v["manifest"], mp.to_str().unwrap());
    // Two outputs under one root: `status` reports each (one JSON line each), `verify` checks each.
    noop_run(&data, &out, &["--split", "test"]);
    let (code, json, e) = cli(&["status", "--json", out_s]);
    assert_eq!(code, Some(0), "{e}");
    let splits: Vec<String> =
        json.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["split"].as_str().unwrap().to_string()).collect();
    assert_eq!(splits, vec!["test", "train"]);
    let (code, text, _) = cli(&["verify", out_s]);
    assert!(code == Some(0) && text.matches("ok: ").count() == 2, "{text}");
    // A folder without a manifest: one line naming it.
    let (code, _, e) = cli(&["status", d.path().join("out/embeddings").to_str().unwrap()]);
    assert!(code == Some(1) && e.contains("no manifest-*.json"), "{e}");
    // Every .json file the run leaves is JSON (the lock file is not named .json).
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "json") {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }
}

#[test]
fn a_dataset_moved_or_typed_another_way_resumes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("part")).unwrap();
    rows_jsonl(&data.join("part"), "d.jsonl", 40);
    let out = d.path().join("out");
    // Typed relative to the working folder.
    let mut c = embed_on(Path::new("data"), &out);
    c.current_dir(d.path()).args(["--encoder", "noop", "--rows-per-shard", "10"]);
    let o = run_limited(&mut c, 60);
    assert!(o.status.success(), "{}", stderr(&o));
    undo_commits(&out, 1);
    // The folder moved elsewhere, given by absolute path, from another working folder: the same dataset.
    let moved = d.path().join("elsewhere/data");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&data, &moved).unwrap();
    let mut c = embed_on(&moved, &out);
    c.current_dir("/").args(["--encoder", "noop", "--rows-per-shard", "10", "--resume"]);
    let o = run_limited(&mut c, 60);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(m.rows_embedded, 40);
    // The manifest names the files for people by absolute path; the fingerprint by their place in the dataset.
    assert_eq!(m.source.files[0].path, moved.join("part/d.jsonl").display().to_string());
    assert_eq!(m.fingerprint.files[0].path, "part/d.jsonl");
}

#[test]
fn completion_scripts_for_the_usual_shells() {
    let d = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, e) = cli(&["completions", shell]);
        assert!(code == Some(0) && script.contains("rows-per-shard") && script.contains("verify"), "{shell}: {e}");
        if shell == "bash" {
            // The script parses as bash.
            let f = d.path().join("c.bash");
            std::fs::write(&f, &script).unwrap();
            let o = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
}

#[test]
fn progress_lines_carry_the_utc_time_and_status_mid_run_shows_live_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 3000);
    let out = dir.path().join("out");
    // 15 shards, each held 400 ms before its commit: a run of about 6 s.
    let mut cmd = embed_cmd();
    let mut child = io_args(&mut cmd, &data, &out)
        .args(["--encoder", "noop", "--rows-per-shard", "200", "--progress-interval", "0.3"])
        .env("CHATSPACE_TEST_DELAY", "writer-commit:400")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut live = None;
    while started.elapsed() < std::time::Duration::from_secs(60) && live.is_none() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (code, stdout, _) = cli(&["status", "--json", out.to_str().unwrap()]);
        let Some(s) = (code == Some(0)).then(|| serde_json::from_str::<serde_json::Value>(stdout.trim()).ok()).flatten() else { continue };
        if s["status"] == "running" && s["rows_done"].as_u64().unwrap_or(0) > 0 && s["rows_per_second"].as_f64().is_some_and(|r| r > 0.0) {
            live = Some(s);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = live.expect("status showed rows done and a throughput while the run was running");
    assert!(s["eta_seconds"].as_f64().is_some() && s["rows_done"].as_u64() < Some(3000), "{s}");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("progress: ")).collect();
    assert!(lines.len() >= 3, "a line every 0.3 s: {err}");
    for l in &lines {
        // progress: 2026-12-06T17:00:00Z 200/3000 rows (6.7%), ..., encoders busy N%, ETA 0:00:05
        let (time, rest) = l["progress: ".len()..].split_once(' ').unwrap();
        assert!(time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{l}");
        assert!(rest.contains(" rows (") && rest.contains("tokens/s") && rest.contains("encoders busy"), "{l}");
        let eta = rest.rsplit("ETA ").next().unwrap();
        assert!(eta == "?" || eta.split(':').count() == 3, "ETA as h:mm:ss: {l}");
    }
}

#[test]
fn progress_bar_forces_the_live_line_and_conflicts_with_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 50);
    let out = dir.path().join("out");
    let o = run_limited(
        embed_cmd().arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).args([
            "--encoder",
            "noop",
            "--progress-bar",
        ]),
        60,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("\r\x1b[2K50/50 rows"), "{:?}", stderr(&o));
    let o = run_limited(embed_on(&data, &out).arg("--progress-bar"), 60);
    assert_eq!(o.status.code(), Some(2), "clap refuses --progress-bar with --no-progress");
}

#[test]
fn embed_flags_come_from_chatspace_environment_variables_and_the_command_line_wins() {
    let (_, help, _) = cli(&["embed", "--help"]);
    for env in ["CHATSPACE_DATASET", "CHATSPACE_MODEL", "CHATSPACE_OUTPUT_ROOT", "CHATSPACE_DEVICE", "CHATSPACE_LOADER_THREADS"] {
        assert!(help.contains(&format!("[env: {env}")), "{env}: {help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 30);
    let out = dir.path().join("out");
    let o = run_limited(
        Command::new(bin())
            .arg("embed")
            .env("CHATSPACE_DATASET", &data)
            .env("CHATSPACE_MODEL", model())
            .env("CHATSPACE_OUTPUT_ROOT", &out)
            .env("CHATSPACE_ROWS_PER_SHARD", "10")
            .env("CHATSPACE_NO_PROGRESS", "true")
            .env("CHATSPACE_BATCH_SIZE", "0")
            .args(["--encoder", "noop", "--batch-size", "8"]),
        60,
    );
    assert!(o.status.success(), "the flag's --batch-size 8 wins over the variable's 0: {}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(m.num_shards, 3, "rows per shard from CHATSPACE_ROWS_PER_SHARD");
    assert!(!stderr(&o).contains("progress:"), "CHATSPACE_NO_PROGRESS");
    let o = run_limited(
        Command::new(bin())
            .arg("embed")
            .env("CHATSPACE_DATASET", &data)
            .env("CHATSPACE_MODEL", model())
            .env("CHATSPACE_OUTPUT_ROOT", dir.path().join("out2"))
            .env("CHATSPACE_BATCH_SIZE", "0"),
        60,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--batch-size"), "a bad value from the environment names the flag: {}", stderr(&o));
}

#[test]
fn the_manifest_records_the_model_folder_as_an_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 20);
    let out = dir.path().join("out");
    let rel = model().strip_prefix(root()).map(Path::to_path_buf).unwrap_or_else(|_| model());
    let o = run_limited(
        embed_cmd().current_dir(root()).arg("--dataset").arg(&data).arg("--model").arg(&rel).arg("--output-root").arg(&out).args([
            "--encoder",
            "noop",
            "--no-progress",
        ]),
        60,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_path(&out)).unwrap()).unwrap();
    let path = m["model_info"]["path"].as_str().unwrap();
    assert!(Path::new(path).is_absolute() && Path::new(path).join("tokenizer.json").is_file(), "{path}");
    assert_eq!(m["model"], "all-MiniLM-L6-v2");
}

#[test]
fn report_writes_one_self_contained_page_with_the_runs_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::copy(root().join("data/sample.jsonl"), &data).unwrap();
    let out = dir.path().join("out");
    let embed = |extra: &[&str]| {
        let o = run_limited(embed_on(&data, &out).args(["--encoder", "noop-tokenized", "--rows-per-shard", "100"]).args(extra), 120);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    embed(&[]);
    // As a preemption leaves it: two shards committed, the run ended by a signal.
    undo_commits(&out, 2);
    let mp = manifest_path(&out);
    let mut header: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    header["runs"][0]["exit"] = "preempted: SIGUSR1 on rank 0".into();
    std::fs::write(&mp, serde_json::to_vec(&header).unwrap()).unwrap();
    embed(&["--resume"]);
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(m.runs.len(), 2);
    assert!(m.runs.iter().all(|r| r.tokens > 0 && r.rows_tokenized > 0 && r.token_lengths.len() >= 3), "{:?}", m.runs);
    // A bare file name: written in the current folder.
    let page = dir.path().join("r.html");
    let o = run_limited(Command::new(bin()).current_dir(dir.path()).args(["report", "out", "-o", "r.html"]), 60);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 output"), "{}", String::from_utf8_lossy(&o.stdout));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained: no scripts or fetched resources");
    let tokens: u64 = m.runs.iter().map(|r| r.tokens).sum();
    let check = r#"
import sys, xml.etree.ElementTree as ET
page, rows, shards, tokens, run1, run2 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
root = ET.parse(page).getroot()
ns = {"h": "http://www.w3.org/1999/xhtml", "s": "http://www.w3.org/2000/svg"}
svgs = root.findall(".//s:svg", ns)
assert len(svgs) >= 4, len(svgs)
cell = lambda i: root.find(f".//h:td[@id='{i}']", ns).text
assert cell("rows-embedded") == rows and cell("shards") == shards and cell("status") == "complete", (cell("rows-embedded"), cell("shards"))
ids = [td.text for td in root.findall(".//h:td[@class='run-id']", ns)]
assert ids == [run1, run2], ids
p = "".join(root.find(".//h:p[@id='tokens']", ns).itertext())
assert (tokens + " tokens") in p, p
texts = " ".join(t for e in root.iter() for t in [e.text or ""])
assert "preempted: SIGUSR1 on rank 0" in texts and "run 2 resume" in texts, "preemption and resume marked"
print("ok")
"#;
    let o = Command::new(std::env::var("CHATSPACE_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg("-c")
        .arg(check)
        .arg(&page)
        .arg(m.rows_embedded.to_string())
        .arg(m.num_shards.to_string())
        .arg(tokens.to_string())
        .arg(&m.runs[0].run_id)
        .arg(&m.runs[1].run_id)
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok"), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}
