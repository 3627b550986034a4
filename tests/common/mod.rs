//! Helpers for the integration tests: the binary, the real model, mpirun, and reading shards back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow_array::{Array, FixedSizeListArray, Float32Array, UInt64Array};
use chatspace_mpi::manifest::Manifest;
use chatspace_mpi::ranges;

pub mod slurm;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chatspace-mpi"))
}

/// The real all-MiniLM-L6-v2 folder (scripts/fetch-model.sh puts it there).
pub fn model() -> PathBuf {
    let p = std::env::var_os("CHATSPACE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| root().join("models/all-MiniLM-L6-v2"));
    assert!(p.join("model.safetensors").is_file(), "real model weights missing at {}: run scripts/fetch-model.sh", p.display());
    p
}

pub fn reference() -> Vec<serde_json::Value> {
    std::fs::read_to_string(root().join("tests/fixtures/minilm-l6-v2-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `chatspace-mpi embed` as a plain process.
pub fn embed_cmd() -> Command {
    let mut c = Command::new(bin());
    c.arg("embed").env("RUST_LOG", "warn").env_remove("OMPI_COMM_WORLD_SIZE");
    c
}

/// `chatspace-mpi embed` as a plain process on `dataset` with the real model, writing under `out`, no progress.
pub fn embed_on(dataset: &Path, out: &Path) -> Command {
    let mut c = embed_cmd();
    io_args(&mut c, dataset, out).arg("--no-progress");
    c
}

/// Adds `--dataset`, the real model and `--output-root` to an `embed` command line (plain or under mpirun).
pub fn io_args<'c>(c: &'c mut Command, dataset: &Path, out: &Path) -> &'c mut Command {
    c.arg("--dataset").arg(dataset).arg("--model").arg(model()).arg("--output-root").arg(out)
}

/// `mpirun -n N chatspace-mpi embed`.
pub fn mpirun_cmd(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("RUST_LOG", "warn")
        .arg(bin())
        .arg("embed");
    c
}

/// Runs with a time limit so a hang fails the test instead of blocking CI.
pub fn run_limited(cmd: &mut Command, secs: u64) -> Output {
    let mut t = Command::new("timeout");
    t.arg("-k").arg("5").arg(secs.to_string()).arg(cmd.get_program());
    t.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        t.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let out = t.output().expect("running the command");
    assert_ne!(out.status.code(), Some(124), "timed out after {secs}s: {}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether an output root holds a manifest yet (its folders are made before the manifest is renamed in).
pub fn manifest_exists(out: &Path) -> bool {
    fn walk(p: &Path) -> bool {
        std::fs::read_dir(p)
            .map(|d| d.flatten().any(|e| if e.path().is_dir() { walk(&e.path()) } else { e.file_name().to_string_lossy().starts_with("manifest-") }))
            .unwrap_or(false)
    }
    walk(&out.join("indexes"))
}

/// The only manifest under an output root.
pub fn manifest_path(out: &Path) -> PathBuf {
    let idx = out.join("indexes");
    let mut found = Vec::new();
    for m in std::fs::read_dir(&idx).unwrap() {
        for d in std::fs::read_dir(m.unwrap().path()).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.file_name().unwrap().to_string_lossy().starts_with("manifest-") {
                    found.push(p);
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// The stored values of one embedding as f32, whatever `--precision` stored (float16, int8/uint8 values,
/// binary bytes).
pub fn stored_values(v: &dyn Array) -> Vec<f32> {
    use arrow_array::{Float16Array, Int8Array, UInt8Array};
    let any = v.as_any();
    if let Some(a) = any.downcast_ref::<Float32Array>() {
        a.values().to_vec()
    } else if let Some(a) = any.downcast_ref::<Float16Array>() {
        a.values().iter().map(|h| h.to_f32()).collect()
    } else if let Some(a) = any.downcast_ref::<Int8Array>() {
        a.values().iter().map(|&x| x as f32).collect()
    } else if let Some(a) = any.downcast_ref::<UInt8Array>() {
        a.values().iter().map(|&x| x as f32).collect()
    } else {
        panic!("embedding values of type {}", v.data_type())
    }
}

/// row_id -> embedding from every shard the manifest names (as f32: see [`stored_values`]); also checks
/// sizes and hashes.
pub fn read_output(out: &Path) -> (Manifest, BTreeMap<u64, Vec<f32>>) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use sha2::Digest;
    let mp = manifest_path(out);
    let m = Manifest::read(&mp).unwrap();
    let mut rows = BTreeMap::new();
    for s in &m.shards {
        if !s.has_file() {
            assert_eq!((s.rows, s.bytes), (0, 0), "an entry without a file holds no rows");
            continue;
        }
        let p = mp.parent().unwrap().join(&s.path);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len() as u64, s.bytes, "{}", s.path);
        assert_eq!(chatspace_mpi::model::hex(&sha2::Sha256::digest(&bytes)), s.sha256, "{}", s.path);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap().build().unwrap();
        let mut n = 0;
        let mut last = None;
        for b in reader {
            let b = b.unwrap();
            let ids = b.column_by_name("row_id").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap().clone();
            let emb = b.column_by_name("embedding").unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap().clone();
            for i in 0..b.num_rows() {
                let id = ids.value(i);
                assert!(ranges::contains(&s.row_ranges, id), "row {id} outside {:?}", s.row_ranges);
                assert!(last.is_none_or(|l| l < id), "rows not sorted by row_id in {}", s.path);
                last = Some(id);
                let v = stored_values(emb.value(i).as_ref());
                assert!(rows.insert(id, v).is_none(), "row {id} appears twice");
                n += 1;
            }
        }
        assert_eq!(n, s.rows, "{}", s.path);
    }
    (m, rows)
}

/// Checks the manifest's bookkeeping: shards tile 0..rows_total and the counts add up.
pub fn check_complete(m: &Manifest, rows: &BTreeMap<u64, Vec<f32>>) {
    assert_eq!(m.status, chatspace_mpi::manifest::Status::Complete);
    let all: Vec<_> = m.shards.iter().flat_map(|s| s.row_ranges.iter().copied()).collect();
    assert_eq!(ranges::total(&all), m.rows_total, "shards overlap or leave gaps");
    assert_eq!(ranges::normalize(all), vec![(0, m.rows_total)], "shards must cover every row once");
    assert_eq!(m.rows_embedded as usize, rows.len());
    assert_eq!(m.rows_embedded + m.rows_skipped, m.rows_total);
    assert_eq!(m.shards.iter().map(|s| s.rows).sum::<u64>(), m.rows_embedded);
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A JSONL dataset: the reference texts, then rows from the bundled sample (with its empty rows).
pub fn write_mixed_dataset(path: &Path, sample_rows: usize) -> usize {
    let mut lines: Vec<String> = reference().iter().map(|r| serde_json::json!({"text": r["text"], "model": "kept"}).to_string()).collect();
    let sample = std::fs::read_to_string(root().join("data/sample.jsonl")).unwrap();
    lines.extend(sample.lines().take(sample_rows).map(String::from));
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    lines.len()
}

/// `chatspace-mpi verify` on the output's manifest must pass.
pub fn verify_ok(out: &Path) {
    let o = Command::new(bin()).arg("verify").arg(manifest_path(out)).output().unwrap();
    assert!(o.status.success(), "verify failed: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

/// Undoes the commits of a finished run after the first `keep` (their lines cut from the shard log, their
/// files removed, the header marked preempted), as a preemption part-way through leaves an output.
pub fn undo_commits(out: &Path, keep: usize) {
    let mp = manifest_path(out);
    let idx = mp.parent().unwrap().to_path_buf();
    let log = idx.join("shards-train.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[keep..] {
        let p: String = serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().into();
        if !p.is_empty() {
            std::fs::remove_file(idx.join(p)).unwrap();
        }
    }
    std::fs::write(&log, lines[..keep].iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let mut header: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    (header["status"], header["num_shards"]) = ("preempted".into(), keep.into());
    std::fs::write(&mp, serde_json::to_vec(&header).unwrap()).unwrap();
}

/// A JSONL file `dir/name` of `rows` short texts ("row number i").
pub fn rows_jsonl(dir: &Path, name: &str, rows: usize) -> PathBuf {
    let p = dir.join(name);
    let body: String = (0..rows).map(|i| format!("{{\"text\":\"row number {i}\"}}\n")).collect();
    std::fs::write(&p, body).unwrap();
    p
}

/// A model folder under `dir` made of the real all-MiniLM-L6-v2 (its files linked) and the modules of
/// tests/fixtures/minilm-dense/{variant} (scripts/make-dense-fixtures.py): Pooling and Dense modules saved
/// by sentence-transformers.
pub fn minilm_with_dense(dir: &Path, variant: &str) -> PathBuf {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let folder = dir.join(format!("minilm-dense-{variant}"));
    std::fs::create_dir_all(&folder).unwrap();
    for e in std::fs::read_dir(model()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "modules.json" {
            std::os::unix::fs::symlink(e.path(), folder.join(e.file_name())).unwrap();
        }
    }
    copy_tree(&root().join("tests/fixtures/minilm-dense").join(variant), &folder);
    folder
}

/// The reference embeddings of tests/fixtures/minilm-dense-reference.jsonl for one variant: (text, vector).
pub fn dense_reference(variant: &str) -> Vec<(String, Vec<f32>)> {
    std::fs::read_to_string(root().join("tests/fixtures/minilm-dense-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["model"] == variant)
        .map(|r| (r["text"].as_str().unwrap().to_string(), r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()))
        .collect()
}

/// The real all-mpnet-base-v2 folder (scripts/fetch-model.sh puts it there).
pub fn mpnet() -> PathBuf {
    let p = root().join("models/all-mpnet-base-v2");
    assert!(p.join("model.safetensors").is_file(), "real all-mpnet-base-v2 weights missing at {}: run scripts/fetch-model.sh", p.display());
    p
}

/// tests/fixtures/mpnet-reference.jsonl (scripts/make-reference.py): the 64 parity texts with the input ids
/// and embeddings of Python sentence-transformers' all-mpnet-base-v2.
pub fn mpnet_reference() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    fixture_reference("mpnet-reference.jsonl")
}

/// A reference file of tests/fixtures: the 64 parity texts with input ids and embeddings.
pub fn fixture_reference(file: &str) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    fixture_reference_as(file, "")
}

/// [`fixture_reference`] of a variant: the ids and embedding under `{prefix}input_ids` and `{prefix}embedding`
/// (`query_`: the texts with the model's query prompt).
pub fn fixture_reference_as(file: &str, prefix: &str) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    std::fs::read_to_string(root().join("tests/fixtures").join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            let ids = r[format!("{prefix}input_ids")].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let v = r[format!("{prefix}embedding")].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (r["text"].as_str().unwrap().to_string(), ids, v)
        })
        .collect()
}

/// A token batch of fixture rows (text, ids, embedding), row ids from `first`.
pub fn fixture_batch(rows: &[(String, Vec<u32>, Vec<f32>)], first: u64) -> chatspace_mpi::encoder::TokenBatch {
    chatspace_mpi::encoder::TokenBatch {
        row_ids: (first..first + rows.len() as u64).collect(),
        lengths: rows.iter().map(|(_, ids, _)| ids.len() as u32).collect(),
        ids: rows.iter().flat_map(|(_, ids, _)| ids.iter().copied()).collect(),
    }
}

/// A plain float32 run of `data` into `dir/full` (batches of 8): row id -> embedding, the reference other
/// runs are compared with.
pub fn reference_run(dir: &Path, data: &Path) -> BTreeMap<u64, Vec<f32>> {
    let full = dir.join("full");
    let o = embed_on(data, &full).args(["--batch-size", "8"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    read_output(&full).1
}
