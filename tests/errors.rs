//! Bad input and failures: one clear line naming the file/row/flag, a non-zero exit, nothing committed lost.

mod common;

use std::path::Path;

use common::*;

fn embed(dataset: &Path, model: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut c = embed_cmd();
    c.arg("--dataset").arg(dataset).arg("--model").arg(model).arg("--output-root").arg(out).arg("--no-progress").args(extra);
    let o = run_limited(&mut c, 120);
    (o.status.success(), stderr(&o))
}

fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in: {stderr}"))
}

/// A model folder linking to the real files, with some left out or replaced.
fn model_variant(dir: &Path, skip: &str, replace: Option<(&str, &str)>) -> std::path::PathBuf {
    let m = dir.join(format!("model-{}", skip.replace('.', "_")));
    std::fs::create_dir_all(m.join("1_Pooling")).unwrap();
    for f in ["modules.json", "config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json", "1_Pooling/config.json"] {
        if f != skip {
            std::os::unix::fs::symlink(model().join(f), m.join(f)).unwrap();
        }
    }
    if let Some((f, body)) = replace {
        std::fs::remove_file(m.join(f)).unwrap();
        std::fs::write(m.join(f), body).unwrap();
    }
    m
}

#[test]
fn bad_inputs_give_one_clear_line_and_a_non_zero_exit() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let good = d.path().join("good.jsonl");
    std::fs::write(&good, "{\"text\":\"hello\"}\n{\"text\":\"world\"}\n").unwrap();
    let m = model();

    let (ok, e) = embed(&d.path().join("missing.jsonl"), &m, &out, &[]);
    assert!(!ok && error_line(&e).contains("dataset not found") && e.contains("missing.jsonl"), "{e}");

    let (ok, e) = embed(&good, &m, &out, &["--text-field", "body"]);
    assert!(!ok && error_line(&e).contains("text field 'body' not found") && e.contains("columns: text"), "{e}");

    let bad_utf8 = d.path().join("bad.jsonl");
    std::fs::write(&bad_utf8, b"{\"text\":\"a\"}\n{\"text\":\"\xff\xfe\"}\n").unwrap();
    let (ok, e) = embed(&bad_utf8, &m, &out, &[]);
    assert!(!ok && error_line(&e).contains("bad.jsonl:2:") && e.contains("not valid UTF-8"), "{e}");

    let bad_pq = d.path().join("broken.parquet");
    std::fs::write(&bad_pq, b"PAR1 this is not parquet").unwrap();
    let (ok, e) = embed(&bad_pq, &m, &out, &[]);
    assert!(!ok && error_line(&e).contains("broken.parquet: not a valid Parquet file"), "{e}");

    let no_tok = model_variant(d.path(), "tokenizer.json", None);
    let (ok, e) = embed(&good, &no_tok, &out, &[]);
    assert!(!ok && error_line(&e).contains("is missing tokenizer.json"), "{e}");

    let t5 = model_variant(d.path(), "none", Some(("config.json", r#"{"model_type":"t5","hidden_size":384}"#)));
    let (ok, e) = embed(&good, &t5, &out, &[]);
    assert!(!ok && error_line(&e).contains("unsupported architecture 't5'"), "{e}");

    // Config fields the encoders size things by are checked at load, naming the field.
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
    for (field, value, named) in [
        ("hidden_size", serde_json::json!(0), "hidden_size"),
        ("num_attention_heads", serde_json::json!(0), "num_attention_heads"),
        ("num_attention_heads", serde_json::json!(5), "not a multiple of num_attention_heads"),
        ("max_position_embeddings", serde_json::json!(-1), "max_position_embeddings"),
        ("layer_norm_eps", serde_json::json!("tiny"), "layer_norm_eps"),
    ] {
        let mut c = config.clone();
        c[field] = value;
        let variant = model_variant(d.path(), &format!("cfg-{field}-{named}"), Some(("config.json", &c.to_string())));
        let (ok, e) = embed(&good, &variant, &out, &[]);
        assert!(!ok && error_line(&e).contains("config.json") && error_line(&e).contains(named), "{field}: {e}");
    }
    let zero_len = model_variant(d.path(), "zero-len", Some(("sentence_bert_config.json", r#"{"max_seq_length": 0}"#)));
    let (ok, e) = embed(&good, &zero_len, &out, &[]);
    assert!(!ok && error_line(&e).contains("sentence_bert_config.json") && error_line(&e).contains("max_seq_length"), "{e}");
    // A length below the special tokens the tokenizer adds ([CLS] and [SEP]): refused up front, not a panic.
    let one = model_variant(d.path(), "len-one", Some(("sentence_bert_config.json", r#"{"max_seq_length": 1}"#)));
    let (ok, e) = embed(&good, &one, &out, &[]);
    assert!(!ok && !e.contains("panicked") && error_line(&e).contains("max_seq_length 1 leaves no room for text"), "{e}");

    // A mistyped local path beside a real folder is not sent to the Hub (no network error): one line with the
    // hf:// form for those who meant the Hub.
    std::fs::create_dir_all(d.path().join("models")).unwrap();
    let mut c = embed_cmd();
    c.current_dir(d.path()).arg("--dataset").arg(&good).args(["--model", "models/nope", "--output-root"]).arg(&out).arg("--no-progress");
    let o = run_limited(&mut c, 60);
    let e = stderr(&o);
    assert!(
        o.status.code() == Some(1) && error_line(&e).contains("--model models/nope: no such model folder") && e.contains("hf://models/nope"),
        "{e}"
    );
    let mut c = embed_cmd();
    c.current_dir(d.path()).args(["--dataset", "models/nope", "--model"]).arg(&m).arg("--output-root").arg(&out).arg("--no-progress");
    let o = run_limited(&mut c, 60);
    let e = stderr(&o);
    assert!(
        o.status.code() == Some(1) && error_line(&e).contains("--dataset models/nope: not found") && e.contains("hf://datasets/models/nope"),
        "{e}"
    );

    let file = d.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (ok, e) = embed(&good, &m, &file.join("out"), &[]);
    assert!(!ok && error_line(&e).contains("--output-root") && e.contains("not writable"), "{e}");

    let (ok, e) = embed(&good, &m, &out, &["--batch-size", "0"]);
    assert!(!ok && error_line(&e).contains("--batch-size"), "{e}");

    // Devices and dtypes this build or CPU cannot run are refused up front.
    if !chatspace_mpi::encoder::cuda::CUDA_BUILT {
        let (ok, e) = embed(&good, &m, &out, &["--device", "cuda"]);
        assert!(!ok && error_line(&e).contains("--device cuda: this binary was built without CUDA"), "{e}");
        let (ok, e) = embed(&good, &m, &out, &["--dtype", "float16"]);
        assert!(!ok && error_line(&e).contains("--dtype float16 runs on CUDA GPUs only"), "{e}");
    }
    let (ok, e) = embed(&good, &m, &out, &["--dtype", "float64"]);
    assert!(!ok && error_line(&e).contains("'float64'") && error_line(&e).contains("--dtype"), "{e}");
    if !chatspace_mpi::encoder::kernels::has_int8_dot() {
        let (ok, e) = embed(&good, &m, &out, &["--dtype", "int8"]);
        assert!(!ok && error_line(&e).contains("AVX512-VNNI"), "{e}");
    }
    let (ok, e) = embed(&good, &m, &out, &["--dtype", "int8", "--encoder", "candle"]);
    assert!(!ok && error_line(&e).contains("--dtype int8: on cpu with --encoder candle use float32"), "{e}");
    // The model's architecture is checked against the encoders' rule table before any rank loads it: Qwen3
    // runs float32 on the CPU (a CPU without AVX512_BF16 refuses bfloat16 before the model is read).
    let qwen = root().join("tests/fixtures/tiny-qwen3-embedding");
    let (ok, e) = embed(&good, &qwen, &out, &["--dtype", "bfloat16", "--device", "cpu"]);
    let want = if chatspace_mpi::encoder::kernels::has_bf16_dot() { "runs on CUDA GPUs only for qwen3 models" } else { "AVX512_BF16" };
    assert!(!ok && error_line(&e).contains("--dtype bfloat16") && error_line(&e).contains(want), "{e}");
    assert!(!out.join("indexes").exists(), "refused runs write nothing");
}

#[test]
fn existing_output_is_refused_without_overwrite_and_kept_intact() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let data = d.path().join("d.jsonl");
    std::fs::write(&data, "{\"text\":\"one\"}\n{\"text\":\"two\"}\n{\"text\":\"three\"}\n").unwrap();
    let (ok, e) = embed(&data, &model(), &out, &["--rows-per-shard", "2"]);
    assert!(ok, "{e}");
    let mp = manifest_path(&out);
    let before = std::fs::read(&mp).unwrap();
    let (ok, e) = embed(&data, &model(), &out, &[]);
    assert!(!ok && error_line(&e).contains("output already exists") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(&mp).unwrap(), before, "a refused run must not touch the manifest");
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    // A live run holds the output's lock: a second run on it is refused, whatever its flags.
    let lock = std::fs::File::open(mp.parent().unwrap().join(".lock-train")).unwrap();
    lock.lock().unwrap();
    let (ok, e) = embed(&data, &model(), &out, &["--resume"]);
    assert!(!ok && error_line(&e).contains("in use by another run"), "{e}");
    drop(lock);
    let (ok, e) = embed(&data, &model(), &out, &["--overwrite", "--rows-per-shard", "3"]);
    assert!(ok, "{e}");
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(m.shards.len(), 1);
}

/// A loader hits a malformed line after shards were committed (under mpirun, 4 ranks): the controller prints
/// which rank and line, the job ends non-zero, and every committed shard stays valid.
#[test]
fn a_rank_failing_mid_run_stops_the_job_and_keeps_committed_shards() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let data = d.path().join("d.jsonl");
    let mut body: String = (0..1400).map(|i| format!("{{\"text\":\"row number {i}\"}}\n")).collect();
    body.push_str("{\"text\": \"unterminated\n");
    std::fs::write(&data, body).unwrap();
    let mut c = mpirun_cmd(4);
    c.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).args(["--rows-per-shard", "100", "--no-progress"]);
    let o = run_limited(&mut c, 120);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    let line = error_line(&e);
    assert!(line.contains("rank 1 (loader 0)") && line.contains("d.jsonl:1401: invalid JSON"), "{e}");
    let (m, _rows) = read_output(&out); // checks sizes, hashes and row ranges of every committed shard
    assert_eq!(m.status, chatspace_mpi::manifest::Status::Failed);
    assert!(m.error.as_deref().unwrap_or("").contains("d.jsonl:1401"));
    assert!(m.shards.iter().all(|s| s.row_ranges.iter().all(|r| r.1 <= 1400)));
}

/// An encoder error (injected) under mpirun reaches rank 0 with the rank, role and row.
#[test]
fn an_encoder_error_is_reported_by_rank_zero() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let data = d.path().join("d.jsonl");
    std::fs::write(&data, (0..50).map(|i| format!("{{\"text\":\"text {i}\"}}\n")).collect::<String>()).unwrap();
    let mut c = mpirun_cmd(4);
    c.env("CHATSPACE_FAULT", "encoder-row:42");
    c.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).args(["--rows-per-shard", "10", "--no-progress"]);
    let o = run_limited(&mut c, 120);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    let line = error_line(&e);
    assert!(line.contains("rank 2 (encoder 0)") && line.contains("row 42"), "{e}");
    let (m, _) = read_output(&out);
    assert!(m.shards.iter().all(|s| !chatspace_mpi::ranges::contains(&s.row_ranges, 42)), "the failed range is not committed");
}

#[test]
fn bad_dense_modules_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let good = rows_jsonl(d.path(), "rows.jsonl", 10);
    let out = d.path().join("out");
    let edit = |name: &str, file: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let folder = minilm_with_dense(&d.path().join(name), "a");
        let path = folder.join(file);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        folder
    };
    let cases: Vec<(std::path::PathBuf, Vec<&str>)> = vec![
        (
            edit("chain", "3_Dense/config.json", &|v| v["in_features"] = 100.into()),
            vec!["3_Dense/config.json", "in_features 100 does not chain", "128"],
        ),
        (
            edit("act", "2_Dense/config.json", &|v| v["activation_function"] = "torch.nn.modules.activation.Softplus".into()),
            vec!["2_Dense/config.json", "activation_function", "Softplus", "not supported"],
        ),
        (
            edit("unknown", "modules.json", &|v| {
                v.as_array_mut()
                    .unwrap()
                    .insert(2, serde_json::json!({"idx": 2, "name": "x", "path": "x", "type": "sentence_transformers.models.LayerNorm"}))
            }),
            vec!["modules.json", "module 2 (sentence_transformers.models.LayerNorm) is not supported"],
        ),
        (edit("order", "modules.json", &|v| v.as_array_mut().unwrap().swap(3, 4)), vec!["modules.json", "module 4", "out of place"]),
        (
            edit("pool", "1_Pooling/config.json", &|v| v["pooling_mode"] = serde_json::json!(["mean", "max"])),
            vec!["1_Pooling/config.json", "mean + max"],
        ),
        (
            edit("pooldim", "1_Pooling/config.json", &|v| v["embedding_dimension"] = 768.into()),
            vec!["1_Pooling/config.json", "embedding_dimension 768"],
        ),
    ];
    for (folder, wanted) in cases {
        let (ok, e) = embed(&good, &folder, &out, &[]);
        assert!(!ok && wanted.iter().all(|w| error_line(&e).contains(w)), "{wanted:?}: {e}");
    }
    let no_weights = minilm_with_dense(&d.path().join("noweights"), "a");
    std::fs::remove_file(no_weights.join("2_Dense/model.safetensors")).unwrap();
    let (ok, e) = embed(&good, &no_weights, &out, &[]);
    assert!(!ok && error_line(&e).contains("2_Dense is missing model.safetensors (or pytorch_model.bin)"), "{e}");
    // Weights of another shape than config.json says: the encoder names the file and the tensor, the run fails.
    let shape = edit("shape", "2_Dense/config.json", &|v| v["out_features"] = 127.into());
    std::fs::write(shape.join("3_Dense/config.json"), std::fs::read_to_string(shape.join("3_Dense/config.json")).unwrap().replace("128", "127"))
        .unwrap();
    let (ok, e) = embed(&good, &shape, &out, &[]);
    assert!(!ok && error_line(&e).contains("2_Dense/model.safetensors") && error_line(&e).contains("linear.weight has shape [128, 384]"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}
