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
