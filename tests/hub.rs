//! Hugging Face Hub datasets and models from a pre-populated HF cache (the layout hf-hub writes: refs/,
//! snapshots/{sha}/ with symlinks into blobs/), offline, under mpirun.

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use common::*;

const DATA_SHA: &str = "1111111111111111111111111111111111111111";
const MULTI_SHA: &str = "2222222222222222222222222222222222222222";
const MODEL_SHA: &str = "3333333333333333333333333333333333333333";
const TOKEN: &str = "hf_this_token_must_never_be_printed";

/// Adds `files` (repo path -> source file) to a cached repo the way hf-hub does.
fn cache_repo(hub: &Path, folder: &str, sha: &str, files: &[(&str, &Path)]) {
    let root = hub.join(folder);
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join("refs/main"), sha).unwrap();
    for (i, (rel, src)) in files.iter().enumerate() {
        let blob = root.join("blobs").join(format!("etag{i:04}"));
        if !blob.exists() {
            std::os::unix::fs::symlink(std::fs::canonicalize(src).unwrap(), &blob).unwrap();
        }
        let link = root.join("snapshots").join(sha).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = rel.matches('/').count() + 2;
        let target = format!("{}blobs/etag{i:04}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
}

fn parquet(path: &Path, texts: &[&str], first_id: i64) {
    let batch = RecordBatch::try_from_iter(vec![
        ("text", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef),
        ("id", Arc::new(Int64Array::from_iter_values(first_id..first_id + texts.len() as i64)) as ArrayRef),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn hub_dataset_and_model_from_an_offline_cache_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let hub = hf_home.join("hub");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    parquet(&src.join("train0.parquet"), &texts[..32], 0);
    parquet(&src.join("train1.parquet"), &texts[32..], 32);
    parquet(&src.join("test0.parquet"), &texts[..3], 100);
    cache_repo(
        &hub,
        "datasets--test-org--snippets",
        DATA_SHA,
        &[
            ("data/train-00000-of-00002.parquet", &src.join("train0.parquet")),
            ("data/train-00001-of-00002.parquet", &src.join("train1.parquet")),
            ("data/test-00000-of-00001.parquet", &src.join("test0.parquet")),
        ],
    );
    cache_repo(
        &hub,
        "datasets--test-org--multi",
        MULTI_SHA,
        &[("en/train-00000-of-00001.parquet", &src.join("test0.parquet")), ("fr/train-00000-of-00001.parquet", &src.join("test0.parquet"))],
    );
    let m = model();
    let model_files: Vec<(&str, std::path::PathBuf)> = [
        "modules.json",
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    ]
    .iter()
    .map(|f| (*f, m.join(f)))
    .collect();
    let model_refs: Vec<(&str, &Path)> = model_files.iter().map(|(f, p)| (*f, p.as_path())).collect();
    cache_repo(&hub, "models--sentence-transformers--all-MiniLM-L6-v2", MODEL_SHA, &model_refs);

    let out = dir.path().join("out");
    let env = |c: &mut std::process::Command| {
        c.env("HF_HOME", &hf_home).env("HF_HUB_OFFLINE", "1").env("HF_TOKEN", TOKEN).env("RUST_LOG", "info");
    };
    let mut c = mpirun_cmd(4);
    env(&mut c);
    c.args([
        "--dataset",
        "test-org/snippets",
        "--split",
        "train",
        "--model",
        "sentence-transformers/all-MiniLM-L6-v2",
        "--rows-per-shard",
        "20",
        "--no-progress",
    ]);
    c.arg("--output-root").arg(&out);
    let o = run_limited(&mut c, 300);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains(TOKEN) && !String::from_utf8_lossy(&o.stdout).contains(TOKEN), "the token was printed");
    let (man, rows) = read_output(&out);
    check_complete(&man, &rows);
    assert_eq!(man.rows_total, 64, "train split only");
    assert_eq!(
        (man.source.kind.as_str(), man.source.repo.as_deref(), man.source.revision.as_deref()),
        ("hf-hub", Some("test-org/snippets"), Some(DATA_SHA))
    );
    assert_eq!(man.model_info.source.as_deref(), Some(format!("hf://sentence-transformers/all-MiniLM-L6-v2@{MODEL_SHA}").as_str()));
    assert!(man.fingerprint.files[0].path.starts_with("hf://datasets/test-org/snippets/data/train-00000"), "{:?}", man.fingerprint.files);
    assert!(manifest_path(&out).ends_with("indexes/sentence-transformers__all-MiniLM-L6-v2/test-org__snippets/manifest-train.json"));
    for (i, r) in refs.iter().enumerate() {
        let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert!(cosine(&rows[&(i as u64)], &want) >= 0.99999, "row {i}");
    }
    let manifest_text = std::fs::read_to_string(manifest_path(&out)).unwrap();
    assert!(!manifest_text.contains(TOKEN));

    // Resolution errors list what exists.
    let run = |args: &[&str]| {
        let mut c = embed_cmd();
        env(&mut c);
        c.args(args).arg("--output-root").arg(dir.path().join("o2"));
        let o = run_limited(&mut c, 60);
        assert!(!o.status.success());
        stderr(&o)
    };
    let model_id = "sentence-transformers/all-MiniLM-L6-v2";
    let e = run(&["--dataset", "test-org/snippets", "--split", "validation", "--model", model_id]);
    assert!(e.contains("no Parquet files for --split validation; available: splits test, train"), "{e}");
    let e = run(&["--dataset", "test-org/multi", "--model", model_id]);
    assert!(e.contains("subsets en, fr (pass --subset)"), "{e}");
    let e = run(&["--dataset", "test-org/multi", "--subset", "de", "--model", model_id]);
    assert!(e.contains("--subset de") && e.contains("subsets en, fr"), "{e}");
    let e = run(&["--dataset", "test-org/absent", "--model", model_id]);
    assert!(e.contains("test-org/absent: not in the HF cache"), "{e}");
    assert!(!e.contains(TOKEN));

    // A subset resolves to its own files.
    let mut c = embed_cmd();
    env(&mut c);
    c.args(["--dataset", "test-org/multi", "--subset", "fr", "--model", model_id, "--no-progress"]).arg("--output-root").arg(dir.path().join("o3"));
    let o = run_limited(&mut c, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m3, _) = read_output(&dir.path().join("o3"));
    assert_eq!((m3.rows_total, m3.subset.as_deref()), (3, Some("fr")));
}

/// A Hub over HTTP (a local Python server speaking the Hub's API) that fails the first download of every file
/// with 503: the model is fetched anyway, by retrying (hf-hub retries nothing unless asked), and a run with
/// `CHATSPACE_HUB_RETRIES=0` fails naming the file.
#[test]
fn hub_downloads_are_retried_after_a_failure() {
    const SERVER: &str = r#"
import hashlib, http.server, json, os, sys
root, repo, sha, port_file, log_file = sys.argv[1:6]
files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
failed = set()
class Hub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        rng = self.headers.get("Range", "")
        with open(log_file, "a") as f:
            f.write(f"{self.path} {rng}\n")
        if self.path.startswith(f"/api/models/{repo}/revision/"):
            return self.reply(200, json.dumps({"sha": sha, "siblings": [{"rfilename": f} for f in files]}).encode())
        prefix = f"/{repo}/resolve/{sha}/"
        if not self.path.startswith(prefix) or self.path[len(prefix):] not in files:
            return self.reply(404)
        name = self.path[len(prefix):]
        data = open(os.path.join(root, name), "rb").read()
        if rng != "bytes=0-0" and name not in failed:
            failed.add(name)
            return self.reply(503, b"busy")
        start, _, end = (rng or "bytes=0-")[6:].partition("-")
        start, end = int(start), int(end) if end else len(data) - 1
        self.reply(206, data[start:end + 1], [("Content-Range", f"bytes {start}-{end}/{len(data)}"),
                   ("ETag", '"' + hashlib.sha256(data).hexdigest() + '"'), ("X-Repo-Commit", sha)])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.replace(port_file + ".tmp", port_file)
srv.serve_forever()
"#;
    let dir = tempfile::tempdir().unwrap();
    let (port_file, log) = (dir.path().join("port"), dir.path().join("requests.log"));
    let python = std::env::var("CHATSPACE_PYTHON").unwrap_or_else(|_| "python3".into());
    /// Stops the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = std::process::Command::new(python)
        .arg("-c")
        .arg(SERVER)
        .arg(model())
        .args(["acme/minilm", MODEL_SHA])
        .arg(&port_file)
        .arg(&log)
        .spawn()
        .unwrap();
    let server = Server(server);
    let started = std::time::Instant::now();
    while !port_file.exists() && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&port_file).expect("the fake Hub started");
    let data = rows_jsonl(dir.path(), "d.jsonl", 5);
    let tokens = |home: &str, retries: Option<&str>| {
        let mut c = std::process::Command::new(bin());
        c.current_dir(dir.path())
            .args(["tokens", "--json", "--model", "acme/minilm", "--dataset"])
            .arg(&data)
            .env("HF_HOME", dir.path().join(home))
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN");
        if let Some(r) = retries {
            c.env("CHATSPACE_HUB_RETRIES", r);
        }
        run_limited(&mut c, 120)
    };
    // No retries: the first 503 fails the run, naming the file.
    let o = tokens("hf-no-retries", Some("0"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("downloading"), "{}", stderr(&o));
    // The default retries: every file is fetched after its failure.
    let o = tokens("hf", None);
    drop(server);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((s["rows"].as_u64(), s["tokenizer"].as_str()), (Some(5), Some("fast-wordpiece")));
    let snapshot = dir.path().join("hf/hub/models--acme--minilm/snapshots").join(MODEL_SHA);
    for f in ["model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
        assert_eq!(std::fs::read(snapshot.join(f)).unwrap(), std::fs::read(model().join(f)).unwrap(), "{f}");
    }
    let requests = std::fs::read_to_string(&log).unwrap();
    let downloads = requests.lines().filter(|l| l.contains("/resolve/") && !l.ends_with("bytes=0-0")).count();
    assert!(downloads >= 2 * 4, "each file downloaded twice (503, then the retry): {requests}");
}
