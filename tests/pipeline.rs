//! End-to-end runs of the binary: plain, and under real mpirun with 1, 2, 4 and 6 ranks.

mod common;

use std::process::Command;

use common::*;

fn python() -> String {
    std::env::var("CHATSPACE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn every_world_size_gives_the_same_rows_and_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mixed.jsonl");
    let total = write_mixed_dataset(&data, 130);
    let refs = reference();
    // (ranks or None for a plain process, extra flags): batching differs on purpose.
    let runs: Vec<(Option<usize>, Vec<&str>)> = vec![
        (None, vec!["--batch-size", "8", "--local-encoders", "2", "--rows-per-shard", "50"]),
        (Some(1), vec!["--batch-size", "32", "--rows-per-shard", "50"]),
        (Some(2), vec!["--batch-size", "5", "--rows-per-shard", "64"]),
        (Some(4), vec!["--tokens-per-batch", "1024", "--rows-per-shard", "50"]),
        (Some(6), vec!["--batch-size", "3", "--rows-per-shard", "37"]),
    ];
    let mut baseline = None;
    for (n, extra) in runs {
        let out = dir.path().join(format!("out-{}", n.map_or("plain".to_string(), |n| n.to_string())));
        let mut cmd = match n {
            Some(n) => mpirun_cmd(n),
            None => embed_cmd(),
        };
        cmd.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).arg("--no-progress");
        cmd.args(&extra);
        let o = run_limited(&mut cmd, 300);
        assert!(o.status.success(), "n={n:?} failed: {}", stderr(&o));
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        assert_eq!(m.rows_total as usize, total);
        assert_eq!(m.rows_skipped, 1, "the sample's one empty-text row in the first 130");
        assert_eq!(m.runs[0].world_size, n.unwrap_or(1));
        // The reference texts (rows 0..64) match Python sentence-transformers.
        for (i, r) in refs.iter().enumerate() {
            let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let got = &rows[&(i as u64)];
            assert!(cosine(got, &want) >= 0.99999 && max_abs_diff(got, &want) <= 1e-4, "n={n:?} row {i}");
        }
        match &baseline {
            None => baseline = Some(rows),
            Some(base) => {
                assert_eq!(base.keys().collect::<Vec<_>>(), rows.keys().collect::<Vec<_>>(), "row ids differ for n={n:?}");
                for (id, v) in &rows {
                    let d = max_abs_diff(v, &base[id]);
                    assert!(d <= 1e-5, "n={n:?}: row {id} differs by {d}");
                }
            }
        }
        if n == Some(4) {
            check_with_pyarrow(&out, &m);
        }
    }
}

/// A real Parquet client reads the shards: schema, row counts, metadata, norms, the source `model` column.
fn check_with_pyarrow(out: &std::path::Path, m: &chatspace_mpi::manifest::Manifest) {
    let script = r#"
import json, sys, pyarrow as pa, pyarrow.parquet as pq, os
mp = sys.argv[1]
m = json.load(open(mp))
assert m["format_version"] == 2 and "shards" not in m, sorted(m)
# The shard log: JSON Lines beside the manifest, one committed shard per line.
shards = [json.loads(l) for l in open(os.path.join(os.path.dirname(mp), m["shard_log"]))]
assert len(shards) == m["num_shards"] and all(len(s["check"]) == 16 for s in shards)
total = 0
for s in shards:
    if not s["path"]:
        assert s["rows"] == 0 and s["bytes"] == 0, s  # skipped rows only: no file
        continue
    t = pq.read_table(os.path.join(os.path.dirname(mp), s["path"]))
    sch = t.schema
    assert sch.names[:3] == ["row_id", "text", "embedding"], sch.names
    assert sch.field("row_id").type == pa.uint64()
    assert sch.field("text").type == pa.string()
    assert sch.field("embedding").type.list_size == 384 and sch.field("embedding").type.value_type == pa.float32()
    assert "model" in sch.names and "source_text" not in sch.names, sch.names
    meta = sch.metadata
    assert meta[b"chatspace.model"] == b"all-MiniLM-L6-v2", meta
    # The same keys in the file's own key-value metadata (what DuckDB and Spark-style readers see).
    kv = pq.ParquetFile(os.path.join(os.path.dirname(mp), s["path"])).metadata.metadata
    assert all(kv.get(k) == v for k, v in meta.items() if k.startswith(b"chatspace.")), kv.keys()
    ids = t.column("row_id").to_pylist()
    assert ids == sorted(ids) and all(any(a <= i < b for a, b in s["row_ranges"]) for i in ids)
    for v in t.column("embedding").to_pylist():
        n = sum(x * x for x in v) ** 0.5
        assert abs(n - 1) < 1e-4, n
    models = set(t.column("model").to_pylist()) - {None}
    assert models <= {"kept"}, models
    total += t.num_rows
assert total == m["rows_embedded"], (total, m["rows_embedded"])
print("pyarrow ok", total)
"#;
    let o = Command::new(python()).arg("-c").arg(script).arg(manifest_path(out)).output().expect("python3 with pyarrow (see .ci/run)");
    assert!(o.status.success(), "pyarrow check failed: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("pyarrow ok {}", m.rows_embedded)));
}

/// Parquet input (several files, several row groups) with chat turns: the first assistant turn is embedded,
/// rows without one are skipped and counted, and source columns (a `model` column included) are kept.
#[test]
fn parquet_chat_input_embeds_first_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chats");
    std::fs::create_dir(&data).unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
def conv(i):
    if i % 5 == 0:
        return [{"role": "user", "content": f"question {i}"}]
    return [{"role": "user", "content": f"question {i}"}, {"role": "ASSISTANT" if i % 2 else "model", "content": f"  answer number {i}  "}]
for f in range(2):
    ids = list(range(f * 30, f * 30 + 30))
    t = pa.table({"messages": [conv(i) for i in ids], "model": [f"m{i}" for i in ids]})
    pq.write_table(t, f"{d}/part-{f}.parquet", row_group_size=7)
"#;
    let o = Command::new(python()).arg("-c").arg(script).arg(&data).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out");
    let mut cmd = embed_cmd();
    cmd.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out);
    cmd.args(["--text-field", "messages", "--extract-first-assistant", "--rows-per-shard", "16", "--no-progress"]);
    let o = run_limited(&mut cmd, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!((m.rows_total, m.rows_skipped), (60, 12));
    assert!(rows.keys().all(|id| id % 5 != 0));
    let check = r#"
import json, sys, os, pyarrow.parquet as pq
mp = sys.argv[1]; m = json.load(open(mp))
for s in map(json.loads, open(os.path.join(os.path.dirname(mp), m["shard_log"]))):
    if not s["path"]:
        continue  # skipped rows only: no file
    t = pq.read_table(os.path.join(os.path.dirname(mp), s["path"])).to_pylist()
    for r in t:
        assert r["text"] == f"answer number {r['row_id']}", r["text"]
        assert r["model"] == f"m{r['row_id']}", r["model"]
        assert r["messages"][0]["content"] == f"question {r['row_id']}"
print("ok")
"#;
    let o = Command::new(python()).arg("-c").arg(check).arg(manifest_path(&out)).output().unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

/// A Qwen3-Embedding model folder under mpirun with the model's `query` prompt: embeddings match
/// sentence-transformers, the prompt is recorded, and resuming with another prompt is refused.
#[test]
fn qwen3_with_a_named_prompt_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let folder = root().join("tests/fixtures/tiny-qwen3-embedding");
    let refs: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/fixtures/tiny-qwen3-embedding-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["prompt_name"] == "query")
        .collect();
    let data = dir.path().join("queries.jsonl");
    std::fs::write(&data, refs.iter().map(|r| serde_json::json!({"text": r["text"]}).to_string() + "\n").collect::<String>()).unwrap();
    let out = dir.path().join("out");
    let mut cmd = mpirun_cmd(3);
    cmd.arg("--dataset").arg(&data).arg("--model").arg(&folder).arg("--output-root").arg(&out);
    cmd.args(["--prompt-name", "query", "--rows-per-shard", "5", "--batch-size", "3", "--no-progress"]);
    let o = run_limited(&mut cmd, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert!(m.preprocessing.prompt.starts_with("Instruct: Given a web search query"));
    assert_eq!(m.model_info.architecture, chatspace_mpi::model::Architecture::Qwen3);
    for (i, r) in refs.iter().enumerate() {
        let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert!(cosine(&rows[&(i as u64)], &want) >= 0.99999, "row {i}");
    }
    let mut again = embed_cmd();
    again.arg("--dataset").arg(&data).arg("--model").arg(&folder).arg("--output-root").arg(&out);
    again.args(["--prompt", "passage: ", "--rows-per-shard", "5", "--resume"]);
    let o = run_limited(&mut again, 60);
    assert!(!o.status.success() && stderr(&o).contains("prompt (manifest"), "{}", stderr(&o));
    let mut bad = embed_cmd();
    bad.arg("--dataset").arg(&data).arg("--model").arg(&folder).arg("--output-root").arg(dir.path().join("o2")).args(["--prompt-name", "nope"]);
    let o = run_limited(&mut bad, 60);
    assert!(
        !o.status.success() && stderr(&o).contains("--prompt-name nope: the model has no such prompt (it has: document, query)"),
        "{}",
        stderr(&o)
    );
}

/// The no-op encoder (plumbing benchmarks) runs the whole pipeline without the model, and its output can
/// never be resumed as model output.
#[test]
fn noop_encoder_runs_the_pipeline_and_is_fingerprinted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, (0..3000).map(|i| format!("{{\"text\":\"row {i} of the plumbing test\"}}\n")).collect::<String>()).unwrap();
    let out = dir.path().join("out");
    let mut cmd = mpirun_cmd(4);
    cmd.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out);
    cmd.args(["--encoder", "noop", "--rows-per-shard", "1000", "--batch-size", "256", "--no-progress"]);
    let o = run_limited(&mut cmd, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(rows.len(), 3000);
    assert!(rows.values().all(|v| v.len() == 384 && (v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4));
    let mut again = embed_cmd();
    again.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).args(["--rows-per-shard", "1000", "--resume"]);
    let o = run_limited(&mut again, 60);
    assert!(!o.status.success() && stderr(&o).contains("encoder (manifest \"noop\", now \"model\")"), "{}", stderr(&o));
}

#[test]
fn truncate_dim_keeps_the_first_dimensions_as_sentence_transformers_does() {
    // Matryoshka truncation: the first N of each embedding, after Normalize and not normalized again (the
    // `truncate_dim` of sentence-transformers), under mpirun -n 4; a plain run without it is the reference.
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 60);
    let want = reference_run(d.path(), &data);
    let cut = d.path().join("cut");
    let mut c = mpirun_cmd(4);
    io_args(&mut c, &data, &cut).args(["--batch-size", "8", "--truncate-dim", "128", "--no-progress"]);
    let o = run_limited(&mut c, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    verify_ok(&cut);
    let (m, rows) = read_output(&cut);
    check_complete(&m, &rows);
    assert_eq!((m.embedding_dim, m.fingerprint.dim, m.fingerprint.truncate_dim), (128, 384, Some(128)));
    assert_eq!(rows.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (id, v) in &rows {
        assert_eq!(v.len(), 128);
        assert!(max_abs_diff(v, &want[id][..128]) <= 1e-6, "row {id}: the first 128 of the full embedding");
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm < 0.999, "row {id}: not normalized again (norm {norm})");
    }
    // Resuming with another dimension is refused by name; out-of-range values exit 1 naming the flag.
    let o = embed_on(&data, &cut).args(["--resume", "--truncate-dim", "64"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("truncate_dim (manifest 128, now 64)"), "{}", stderr(&o));
    for bad in ["0", "385"] {
        let o = embed_on(&data, &d.path().join(format!("bad-{bad}"))).args(["--truncate-dim", bad]).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(stderr(&o).contains("--truncate-dim"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn long_text_chunk_embeds_every_token_in_windows() {
    // `--long-text chunk` with the real MiniLM (max 256 tokens) under mpirun -n 4: rows of up to a few thousand tokens
    // become windows of [CLS] + 254 tokens + [SEP]; each row's vector is the windows' embeddings averaged by
    // tokens and normalized. The windows are made here from `tokenizers` without truncation and embedded by
    // the parity-tested CPU encoder; short rows equal a truncating run's, long ones differ from it.
    use chatspace_mpi::encoder::{self, BackendOptions, TokenBatch};
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("long.jsonl");
    let sentences: Vec<String> = reference().iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    let mut texts: Vec<String> = sentences.iter().take(20).cloned().collect();
    for k in 1..=6 {
        // 12 to 72 parity sentences joined: a few hundred to a few thousand tokens.
        texts.push(sentences.iter().cycle().skip(k * 3).take(k * 12).cloned().collect::<Vec<_>>().join(" "));
    }
    let body: String = texts.iter().map(|t| serde_json::json!({ "text": t }).to_string() + "\n").collect();
    std::fs::write(&data, body).unwrap();
    let (chunked, cut) = (d.path().join("chunk"), d.path().join("truncate"));
    for (out, mode) in [(&chunked, "chunk"), (&cut, "truncate")] {
        let mut c = mpirun_cmd(4);
        io_args(&mut c, &data, out).args(["--batch-size", "4", "--rows-per-shard", "10", "--long-text", mode, "--no-progress"]);
        let o = run_limited(&mut c, 300);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        verify_ok(out);
    }
    let (m, rows) = read_output(&chunked);
    check_complete(&m, &rows);
    let (_, truncated) = read_output(&cut);
    assert_eq!(m.fingerprint.long_text, chatspace_mpi::cli::LongText::Chunk);

    let spec = chatspace_mpi::model::ModelSpec::load(&model(), None).unwrap();
    let mut tok = tokenizers::Tokenizer::from_file(model().join("tokenizer.json")).unwrap();
    tok.with_truncation(None).unwrap();
    let mut backend = encoder::load(&spec, BackendOptions::cpu(1)).unwrap();
    let mut long = 0;
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        let got = &rows[&(i as u64)];
        if ids.len() <= 256 {
            assert!(max_abs_diff(got, &truncated[&(i as u64)]) <= 1e-6, "row {i} fits: as a truncating run");
            continue;
        }
        long += 1;
        let (cls, sep, body) = (ids[0], ids[ids.len() - 1], &ids[1..ids.len() - 1]);
        let mut b = TokenBatch { row_ids: Vec::new(), lengths: Vec::new(), ids: Vec::new() };
        for part in body.chunks(254) {
            b.row_ids.push(b.row_ids.len() as u64);
            b.lengths.push(part.len() as u32 + 2);
            b.ids.push(cls);
            b.ids.extend_from_slice(part);
            b.ids.push(sep);
        }
        assert!(b.rows() >= 2, "row {i}: {} tokens", ids.len());
        let vectors = backend.embed(&b).unwrap();
        let mut want = vec![0f32; 384];
        for (v, &n) in vectors.chunks(384).zip(&b.lengths) {
            want.iter_mut().zip(v).for_each(|(w, x)| *w += x * n as f32);
        }
        let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        want.iter_mut().for_each(|x| *x /= norm);
        assert!(max_abs_diff(got, &want) <= 1e-5, "row {i} ({} tokens, {} windows)", ids.len(), b.rows());
        assert!(cosine(got, &truncated[&(i as u64)]) < 0.9999, "row {i}: the windows past the first count");
    }
    assert!(long >= 5, "{long} long rows");
    assert_eq!(m.runs.iter().map(|r| r.rows_truncated).sum::<u64>(), long, "long rows counted");
    // Resuming with the other mode is refused by name.
    let o = embed_on(&data, &chunked).args(["--resume", "--long-text", "truncate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("long_text (manifest \"chunk\", now null)"), "{}", stderr(&o));
}

#[test]
fn dense_models_embed_through_the_pipeline_as_sentence_transformers_does() {
    // The Dense fixtures (MiniLM + Dense modules saved by sentence-transformers; tests/parity.rs checks the
    // encoders) through `embed`: a under mpirun -n 4, b as a plain process. Every row equals sentence-transformers'
    // vector of its text.
    let d = tempfile::tempdir().unwrap();
    for (variant, mut cmd, modules) in [("a", mpirun_cmd(4), 2), ("b", embed_cmd(), 4)] {
        let folder = minilm_with_dense(d.path(), variant);
        let refs = dense_reference(variant);
        let data = d.path().join(format!("{variant}.jsonl"));
        let body: String = refs.iter().map(|(t, _)| serde_json::json!({ "text": t }).to_string() + "\n").collect();
        std::fs::write(&data, body).unwrap();
        let out = d.path().join(format!("out-{variant}"));
        cmd.arg("--dataset").arg(&data).arg("--model").arg(&folder).arg("--output-root").arg(&out);
        cmd.args(["--batch-size", "5", "--rows-per-shard", "6", "--no-progress"]);
        let o = run_limited(&mut cmd, 180);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        verify_ok(&out);
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        let dim = refs[0].1.len();
        assert_eq!((m.embedding_dim, m.fingerprint.dim, m.fingerprint.dense.len(), rows.len()), (dim, 384, modules, 16), "{variant}");
        for (id, v) in &rows {
            let want = &refs[*id as usize].1;
            let (c, diff) = (cosine(v, want), max_abs_diff(v, want));
            assert!(c >= 0.99999 && diff <= 1e-5, "{variant}: row {id}: cosine {c}, max abs diff {diff}");
        }
        // Other Dense weights are other vectors: a resume is refused naming the field.
        let cfg = folder.join("2_Dense/config.json");
        let changed = std::fs::read_to_string(&cfg).unwrap().replace("\"bias\": true", "\"bias\": false");
        std::fs::write(&cfg, changed).unwrap();
        let o = embed_cmd()
            .arg("--dataset")
            .arg(&data)
            .arg("--model")
            .arg(&folder)
            .arg("--output-root")
            .arg(&out)
            .args(["--resume", "--no-progress"])
            .output()
            .unwrap();
        assert!(o.status.code() == Some(1) && stderr(&o).contains("dense"), "{variant}: {}", stderr(&o));
    }
}

#[test]
fn mpnet_xlm_roberta_modernbert_and_gemma_embed_through_the_pipeline_as_sentence_transformers_does() {
    // The real all-mpnet-base-v2 on the 64 parity texts, under mpirun -n 4 and as a plain process, the tiny
    // XLM-RoBERTa fixture (Unigram tokenizer) and the tiny RoBERTa (byte-level BPE) both ways, the tiny ModernBERT (byte-level BPE,
    // sliding-window layers) both ways, and the tiny embeddinggemma-style Gemma3 (two Dense modules) both ways,
    // plainly with its `query` prompt: every row equals Python sentence-transformers' vector
    // (tests/fixtures/{mpnet,tiny-xlm-roberta,tiny-modernbert,tiny-gemma-embedding}-reference.jsonl).
    use chatspace_mpi::model::Architecture;
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("parity.jsonl");
    let body: String = mpnet_reference().iter().map(|(t, _, _)| serde_json::json!({ "text": t }).to_string() + "\n").collect();
    std::fs::write(&data, body).unwrap();
    let fixture = |name: &str| root().join("tests/fixtures").join(name);
    let runs = [
        ("mpirun", mpirun_cmd(4), mpnet(), "mpnet-reference.jsonl", 768, Architecture::Mpnet),
        ("plain", embed_cmd(), mpnet(), "mpnet-reference.jsonl", 768, Architecture::Mpnet),
        ("xlm-roberta", mpirun_cmd(4), fixture("tiny-xlm-roberta"), "tiny-xlm-roberta-reference.jsonl", 64, Architecture::XlmRoberta),
        ("xlm-roberta-plain", embed_cmd(), fixture("tiny-xlm-roberta"), "tiny-xlm-roberta-reference.jsonl", 64, Architecture::XlmRoberta),
        ("roberta", mpirun_cmd(4), fixture("tiny-roberta"), "tiny-roberta-reference.jsonl", 64, Architecture::Roberta),
        ("roberta-plain", embed_cmd(), fixture("tiny-roberta"), "tiny-roberta-reference.jsonl", 64, Architecture::Roberta),
        ("modernbert", mpirun_cmd(4), fixture("tiny-modernbert"), "tiny-modernbert-reference.jsonl", 64, Architecture::ModernBert),
        ("modernbert-plain", embed_cmd(), fixture("tiny-modernbert"), "tiny-modernbert-reference.jsonl", 64, Architecture::ModernBert),
        ("gemma", mpirun_cmd(4), fixture("tiny-gemma-embedding"), "tiny-gemma-embedding-reference.jsonl", 64, Architecture::Gemma3Text),
        ("gemma-query", embed_cmd(), fixture("tiny-gemma-embedding"), "tiny-gemma-embedding-reference.jsonl", 64, Architecture::Gemma3Text),
    ];
    for (name, mut cmd, model, reference, dim, arch) in runs {
        let query = name.ends_with("-query");
        let refs = fixture_reference_as(reference, if query { "query_" } else { "" });
        if query {
            cmd.args(["--prompt-name", "query"]);
        }
        let out = d.path().join(name);
        cmd.arg("--dataset").arg(&data).arg("--model").arg(&model).arg("--output-root").arg(&out);
        cmd.args(["--batch-size", "8", "--rows-per-shard", "20", "--no-progress"]);
        let o = run_limited(&mut cmd, 300);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        verify_ok(&out);
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        assert_eq!((m.embedding_dim, rows.len(), m.model_info.architecture), (dim, 64, arch), "{name}");
        for (id, v) in &rows {
            let (text, _, want) = &refs[*id as usize];
            let (c, diff) = (cosine(v, want), max_abs_diff(v, want));
            assert!(c >= 0.99999 && diff <= 1e-5, "{name}: row {id} ({text:?}): cosine {c}, max abs diff {diff}");
        }
    }
}

/// Every message over MPI split into parts of at most 1,000 bytes (the plan, chunks of text, token batches,
/// embeddings) arrives whole: the output equals a plain run's, bit for bit.
#[test]
fn messages_split_into_parts_arrive_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_mixed_dataset(&data, 100);
    let mut outputs = Vec::new();
    for (name, mut cmd) in [("plain", embed_cmd()), ("parts", mpirun_cmd(4))] {
        let out = dir.path().join(name);
        cmd.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out);
        cmd.args(["--encoder", "noop", "--rows-per-shard", "40", "--batch-size", "16", "--no-progress"]);
        cmd.env("CHATSPACE_MPI_MAX_MESSAGE", "1000");
        let o = run_limited(&mut cmd, 120);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        outputs.push(rows);
    }
    assert!(outputs[0].len() > 150, "{} rows", outputs[0].len());
    assert!(outputs[0] == outputs[1], "split messages changed the output");
}

/// Ranges whose rows are all skipped leave no zero-row Parquet file (Hugging Face `datasets` fails on one), also
/// after an interrupted run is resumed; the output then loads with `datasets`, pyarrow and pandas.
#[test]
fn skipped_ranges_leave_no_empty_files_and_the_output_loads_with_hf_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    // 60 rows; rows 10..30 (two whole shards of 10) have no text.
    let body: String =
        (0..60).map(|i| if (10..30).contains(&i) { "{\"text\":\"  \"}\n".to_string() } else { format!("{{\"text\":\"row {i}\"}}\n") }).collect();
    std::fs::write(&data, body).unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut cmd = embed_on(&data, &out);
        cmd.args(["--encoder", "noop", "--rows-per-shard", "10"]).args(extra);
        let o = run_limited(&mut cmd, 120);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    run(&[]);
    // Interrupted: the last commits undone, as a preemption half-way leaves an output.
    undo_commits(&out, 3);
    run(&["--resume"]);
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!((m.rows_embedded, m.rows_skipped), (40, 20));
    let fileless: Vec<_> = m.shards.iter().filter(|s| !s.has_file()).collect();
    assert_eq!(fileless.len(), 2, "the two all-skipped ranges are entries without files");
    assert!(fileless.iter().all(|s| s.rows == 0 && s.rows_skipped == 10));
    verify_ok(&out);
    let shard_dir = out.join("embeddings/all-MiniLM-L6-v2/d/train");
    let check = r#"
import glob, os, sys
os.environ["HF_DATASETS_OFFLINE"] = "1"; os.environ["HF_HUB_OFFLINE"] = "1"
import datasets, pyarrow.parquet as pq
files = sorted(glob.glob(os.path.join(sys.argv[1], "*.parquet")))
assert all(pq.ParquetFile(f).metadata.num_rows > 0 for f in files), "a shard file without rows"
ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=sys.argv[2])
assert len(ds) == 40 and sorted(ds["row_id"]) == [i for i in range(60) if not 10 <= i < 30], len(ds)
df = ds.to_pandas()
assert len(df) == 40 and len(df["embedding"][0]) == 384
print("ok")
"#;
    let o = Command::new(python()).arg("-c").arg(check).arg(&shard_dir).arg(dir.path().join("hf-cache")).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok"), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

/// Outputs of two models in one root: the dataset card written when a run completes makes each model and
/// dataset a config of its own, so `load_dataset(root, config)` loads one model's rows and `load_dataset(root)`
/// asks which instead of merging them.
#[test]
fn the_dataset_card_makes_each_model_a_config_that_load_dataset_loads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 30);
    let out = dir.path().join("out");
    for (name, split) in [("model-a", "train"), ("model-b", "train"), ("model-b", "test")] {
        let mut cmd = embed_on(&data, &out);
        cmd.args(["--encoder", "noop", "--rows-per-shard", "10", "--model-name", name, "--split", split]);
        let o = run_limited(&mut cmd, 120);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with("---\nconfigs:\n") && card.contains("model-a--d") && card.contains("model-b--d"), "{card}");
    let check = r#"
import os, sys
os.environ["HF_DATASETS_OFFLINE"] = "1"; os.environ["HF_HUB_OFFLINE"] = "1"
import datasets
root, cache = sys.argv[1], sys.argv[2]
a = datasets.load_dataset(root, "model-a--d", split="train", cache_dir=cache)
assert len(a) == 30 and len(a[0]["embedding"]) == 384, len(a)
b = datasets.load_dataset(root, "model-b--d", cache_dir=cache)
assert sorted(b.keys()) == ["test", "train"] and len(b["train"]) == 30 and len(b["test"]) == 30, b
try:
    datasets.load_dataset(root, cache_dir=cache)
except ValueError as e:
    assert "model-a--d" in str(e), e
else:
    raise AssertionError("several models were merged into one dataset")
print("ok")
"#;
    let o = Command::new(python()).arg("-c").arg(check).arg(&out).arg(dir.path().join("hf-cache")).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok"), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
}

/// The README's "Reading the output" snippets (pyarrow, numpy, pandas, polars, DuckDB, HF `datasets`), run in
/// order against a real output made as the README says, interrupted and resumed; each prints what is checked.
#[test]
fn the_readme_snippets_for_reading_the_output_run() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("\n## Reading the output\n").nth(1).expect("the README has the section").split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section.split("```python\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 6, "pyarrow, numpy, pandas, polars, duckdb, datasets");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("data/sample.jsonl"), dir.path().join("sample.jsonl")).unwrap();
    let o = run_limited(
        embed_cmd()
            .current_dir(dir.path())
            .args(["--dataset", "sample.jsonl", "--output-root", "out", "--rows-per-shard", "200", "--no-progress", "--model"])
            .arg(model()),
        300,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Interrupted after the first shard and resumed: shards are then committed out of row order.
    undo_commits(&dir.path().join("out"), 1);
    let o = run_limited(
        embed_cmd()
            .current_dir(dir.path())
            .args(["--dataset", "sample.jsonl", "--output-root", "out", "--rows-per-shard", "200", "--no-progress", "--resume", "--model"])
            .arg(model()),
        300,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, rows) = read_output(&dir.path().join("out"));
    check_complete(&m, &rows);
    let o = Command::new(python())
        .arg("-c")
        .arg(blocks.concat())
        .current_dir(dir.path())
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let (rows, dim) = (m.rows_embedded, m.embedding_dim);
    let expected = [
        format!("{rows} fixed_size_list<item: float not null>[{dim}]"),
        format!("({rows}, {dim}) float32 1.0"),
        format!("{rows} ({rows}, {dim})"),
        format!("{rows} ({rows}, {dim})"),
        "0 1.0".to_string(),
        format!("{rows} {dim}"),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{}", stderr(&o));
}

#[test]
fn precision_stores_embeddings_as_sentence_transformers_quantizes_them() {
    use chatspace_mpi::quantize::{quantize, Precision, Ranges};
    // A float32 run is the reference; each precision's stored values equal sentence-transformers'
    // quantize_embeddings of those vectors (its formulas are checked against its own outputs in
    // src/quantize.rs), int8 under mpirun -n 4 with ranges calibrated on 40 rows by rank 0.
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 60);
    let want = reference_run(d.path(), &data);
    let stored = |precision: Precision, v: &[f32], ranges: Option<&Ranges>| -> Vec<f32> {
        stored_values(quantize(v.to_vec(), v.len(), precision, ranges).unwrap().as_ref())
    };
    let int8 = d.path().join("int8");
    let mut c = mpirun_cmd(4);
    io_args(&mut c, &data, &int8).args(["--batch-size", "8", "--precision", "int8", "--calibration-rows", "40", "--no-progress"]);
    let o = run_limited(&mut c, 120);
    assert!(o.status.success(), "{}", stderr(&o));
    verify_ok(&int8);
    let (m, rows) = read_output(&int8);
    check_complete(&m, &rows);
    assert_eq!((m.fingerprint.precision, m.embedding_dim), (Precision::Int8, 384));
    // The ranges are the calibration rows' minimum and maximum per dimension.
    let ranges = m.fingerprint.quantization_ranges.clone().expect("ranges in the manifest");
    let calibration: Vec<f32> = chatspace_mpi::controller::calibrate::calibration_ranges(60, 40)
        .into_iter()
        .flat_map(|(a, b)| a..b)
        .flat_map(|id| want[&id].clone())
        .collect();
    let expected = Ranges::of(&calibration, 384).unwrap();
    assert!(ranges.min.iter().zip(&expected.min).chain(ranges.max.iter().zip(&expected.max)).all(|(a, b)| (a - b).abs() <= 1e-6));
    let (mut values, mut off) = (0, 0);
    for (id, v) in &rows {
        let e = stored(Precision::Int8, &want[id], Some(&ranges));
        assert_eq!(v.len(), 384);
        for (a, b) in v.iter().zip(&e) {
            values += 1;
            // Vectors equal within 1e-6 can straddle a bucket boundary: one step at most, rarely.
            assert!((a - b).abs() <= 1.0, "row {id}: {a} vs {b}");
            off += usize::from(a != b);
        }
    }
    assert!(off * 1000 <= values, "{off} of {values} values one bucket off");
    // The same ranges reused from that manifest for uint8; float16 and binary without ranges.
    for (name, extra) in [
        ("uint8", vec!["--precision".to_string(), "uint8".into(), "--calibration-ranges".into(), manifest_path(&int8).display().to_string()]),
        ("float16", vec!["--precision".into(), "float16".into()]),
        ("ubinary", vec!["--precision".into(), "ubinary".into()]),
    ] {
        let out = d.path().join(name);
        let o = embed_on(&data, &out).args(["--batch-size", "8"]).args(&extra).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        verify_ok(&out);
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        let precision = Precision::parse(name).unwrap();
        assert_eq!(m.fingerprint.precision, precision);
        assert_eq!(m.fingerprint.quantization_ranges.as_ref(), (name == "uint8").then_some(&ranges), "{name}");
        for (id, v) in &rows {
            let e = stored(precision, &want[id], m.fingerprint.quantization_ranges.as_ref());
            assert_eq!(v.len(), precision.stored_dim(384), "{name}");
            let worst = v.iter().zip(&e).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            // float16: one rounding step of values under 1; ubinary: bytes equal (no value sits within 1e-6 of 0).
            let bound = match precision {
                Precision::Float16 => 1e-3,
                Precision::Uint8 => 1.0,
                _ => 0.0,
            };
            assert!(worst <= bound, "{name}: row {id} differs by {worst}");
        }
    }
    // Another precision on resume is refused by name; ranges of another dimension are refused naming the flag.
    let o = embed_on(&data, &int8).args(["--resume", "--precision", "uint8"]).output().unwrap();
    assert!(o.status.code() == Some(1) && stderr(&o).contains("precision"), "{}", stderr(&o));
    let bad = d.path().join("ranges.json");
    std::fs::write(&bad, r#"{"min": [0.0, 0.0], "max": [1.0, 1.0]}"#).unwrap();
    let o = embed_on(&data, &d.path().join("bad")).args(["--precision", "int8", "--calibration-ranges"]).arg(&bad).output().unwrap();
    assert!(o.status.code() == Some(1) && stderr(&o).contains("--calibration-ranges") && stderr(&o).contains("384 dimensions"), "{}", stderr(&o));
    let o = embed_on(&data, &d.path().join("bad2")).args(["--calibration-ranges"]).arg(&bad).output().unwrap();
    assert!(o.status.code() == Some(1) && stderr(&o).contains("--calibration-ranges: only with --precision int8 or uint8"), "{}", stderr(&o));
}
