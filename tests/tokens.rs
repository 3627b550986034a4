//! `chatspace-mpi tokens` and the loaders' tokenizer: ids compared with Python `tokenizers` on a corpus made
//! fresh for each run, bad input, and `embed --encoder noop-tokenized` under mpirun.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn python() -> String {
    std::env::var("CHATSPACE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn tokens_cmd(dataset: &Path) -> Command {
    tokens_with(dataset, &model())
}

fn tokens_with(dataset: &Path, model: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg("tokens").arg("--dataset").arg(dataset).arg("--model").arg(model).env("RUST_LOG", "warn");
    c
}

/// A model folder with Qwen's byte-level BPE tokenizer (151,643 tokens; scripts/fetch-model.sh makes it): the
/// tiny Qwen3 fixture with that tokenizer.json (`tokens` reads no weights).
fn qwen_model(dir: &Path) -> std::path::PathBuf {
    let tokenizer = root().join("models/qwen-tokenizer/tokenizer.json");
    assert!(tokenizer.is_file(), "{} missing: run scripts/fetch-model.sh", tokenizer.display());
    let m = dir.join("qwen");
    let ok = Command::new("cp").arg("-r").arg(root().join("tests/fixtures/tiny-qwen3-embedding")).arg(&m).status().unwrap().success();
    assert!(ok);
    std::fs::copy(tokenizer, m.join("tokenizer.json")).unwrap();
    m
}

/// xorshift64: the corpus generator's randomness (seeded, so a failing corpus can be made again).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A corpus no test has seen: texts drawn from words and characters of many scripts, code, controls, NUL,
/// emoji sequences, the tokenizer's own special tokens, long words and texts far past the model's length.
fn fresh_corpus(seed: u64, rows: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "embedding",
        "Tokenization",
        "résumé",
        "naïve",
        "Straße",
        "İstanbul",
        "ﬁnance",
        "ǅemal",
        "ΣΟΦΙΑ",
        "москва",
        "日本語",
        "中文",
        "한국어",
        "ภาษาไทย",
        "हिन्दी",
        "العربية",
        "עברית",
        "👨‍👩‍👧",
        "🏳️‍🌈",
        "👍🏽",
        "fn",
        "main()",
        "{x: 1}",
        "a_b",
        "C++",
        "x86-64",
        "e\u{301}",
        "o\u{308}\u{304}",
        "\u{0}",
        "\u{7}",
        "\u{85}",
        "\u{200b}",
        "\u{feff}",
        "\u{fffd}",
        "\u{a0}",
        "\u{3000}",
        "\t",
        "\r\n",
        "[SEP]",
        "[CLS]",
        "[MASK]",
        "[unk]",
        "https://x.org/a?b=c",
        "3.14",
        "1,000",
        "¿Qué?",
        "«quote»",
        "—",
        "…",
        "𝔘𝔫𝔦",
        "𠀀",
        "\u{e000}",
        "Ⅻ",
        "ｆｕｌｌ",
        "ß",
        "ﬀ",
        "Ω",
        "K",
        "Å",
        "ς",
    ];
    const RANGES: &[(u32, u32)] = &[
        (0x20, 0x7e),
        (0x0, 0x1f),
        (0xa0, 0x2af),
        (0x300, 0x36f),
        (0x370, 0x52f),
        (0x590, 0x6ff),
        (0x900, 0x97f),
        (0xe00, 0xe7f),
        (0x1e00, 0x1fff),
        (0x2000, 0x2bff),
        (0x3000, 0x30ff),
        (0x3400, 0x4dbf),
        (0x4e00, 0x9fff),
        (0xac00, 0xd7a3),
        (0xf900, 0xfaff),
        (0xfb00, 0xfdff),
        (0xfe00, 0xffef),
        (0x1d400, 0x1d7ff),
        (0x1f300, 0x1faff),
        (0x20000, 0x2a6df),
    ];
    let mut r = Rng(seed | 1);
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut s = String::new();
        let pieces = match r.below(20) {
            0 => 2000 + r.below(4000),
            1..=3 => 100 + r.below(400),
            _ => r.below(60),
        };
        for _ in 0..pieces {
            match r.below(10) {
                0..=4 => s.push_str(WORDS[r.below(WORDS.len())]),
                5..=7 => {
                    let (lo, hi) = RANGES[r.below(RANGES.len())];
                    if let Some(c) = char::from_u32(lo + (r.next() % u64::from(hi - lo + 1)) as u32) {
                        s.push(c);
                    }
                }
                _ => {}
            }
            if r.below(3) > 0 {
                s.push(' ');
            }
        }
        if r.below(50) == 0 {
            // One long run without spaces.
            s.push_str(&"ab".repeat(20_000 + r.below(30_000)));
        }
        out.push(s);
    }
    out
}

#[test]
fn tokens_ids_match_python_tokenizers_on_a_fresh_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CHATSPACE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("corpus seed {seed} (CHATSPACE_TEST_SEED={seed} makes it again)");
    let texts = fresh_corpus(seed, 3000);
    let data = dir.path().join("corpus.jsonl");
    let lines: Vec<String> = texts.iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    for (model, engine) in [
        (model(), "fast-wordpiece"),
        (mpnet(), "tokenizers"),
        (root().join("tests/fixtures/tiny-xlm-roberta"), "tokenizers"),
        (qwen_model(dir.path()), "fast-bpe"),
    ] {
        let ids = dir.path().join(format!("ids-{}.parquet", model.file_name().unwrap().to_string_lossy()));
        let o = run_limited(tokens_with(&data, &model).args(["--threads", "2", "--json", "--ids-output"]).arg(&ids), 300);
        assert!(o.status.success(), "{}", stderr(&o));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(s["tokenizer"], engine);
        let embedded = texts.iter().filter(|t| !t.trim().is_empty()).count() as u64;
        assert_eq!(s["rows"], embedded);
        assert_eq!(s["rows_skipped"], texts.len() as u64 - embedded);
        assert!(s["rows_truncated"].as_u64().unwrap() > 0, "long texts are in the corpus");
        let hist: u64 = s["histogram"].as_array().unwrap().iter().map(|b| b["rows"].as_u64().unwrap()).sum();
        assert_eq!(hist, embedded);
        let o = run_limited(
            Command::new(python())
                .arg("-c")
                .arg(PYTHON_CHECK)
                .arg(&model)
                .arg(&data)
                .arg(&ids)
                .arg(s["max_seq_length"].to_string())
                .arg(s["tokens"].to_string()),
            300,
        );
        assert!(o.status.success(), "seed {seed}, {engine}: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("ok {embedded}")));
    }
}

/// Python `tokenizers` on the same texts and tokenizer.json (truncating at the model's length, no padding):
/// every row's ids equal, the token count equal, the row ids those of the rows with text.
const PYTHON_CHECK: &str = r#"
import json, sys
import pyarrow.parquet as pq
from tokenizers import Tokenizer
model, data, ids, max_len, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tok = Tokenizer.from_file(model + "/tokenizer.json")
tok.enable_truncation(max_length=max_len)
tok.no_padding()
texts = [json.loads(l)["text"] for l in open(data, encoding="utf-8")]
t = pq.read_table(ids).to_pydict()
expected = tok.encode_batch([texts[r] for r in t["row_id"]])
bad = [(r, a, e.ids) for r, a, e in zip(t["row_id"], t["ids"], expected) if a != e.ids]
assert not bad, "rows differ: %d, first: row %d\nours   %s\npython %s\ntext %r" % (len(bad), bad[0][0], bad[0][1], bad[0][2], texts[bad[0][0]][:300])
assert sum(len(a) for a in t["ids"]) == tokens, "token count"
# Rust's trim: Unicode White_Space (Python's strip also takes U+001C..U+001F).
ws = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
kept = [i for i, x in enumerate(texts) if x.strip(ws)]
assert t["row_id"] == kept, "row ids are the rows with text, in order"
print("ok", len(t["row_id"]))
"#;

#[test]
fn tokens_counts_the_rows_embed_embeds_with_the_prompt_and_reports_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"text\": \"Hello world\"}\n{\"text\": \"\"}\n{\"other\": 1}\n{\"text\": \"a b c d\"}\n").unwrap();
    let run = |extra: &[&str]| {
        let o = run_limited(tokens_cmd(&data).args(extra), 60);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let plain: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!((plain["rows"].as_u64(), plain["rows_skipped"].as_u64()), (Some(2), Some(2)));
    // [CLS] hello world [SEP] and [CLS] a b c d [SEP].
    assert_eq!(plain["tokens"], 4 + 6);
    let prompted: serde_json::Value = serde_json::from_str(&run(&["--json", "--prompt", "query: "])).unwrap();
    assert_eq!(prompted["tokens"], 10 + 2 * 2, "the prompt's two tokens on each row");
    let both: Vec<serde_json::Value> =
        ["fast", "reference"].iter().map(|t| serde_json::from_str(&run(&["--json", "--tokenizer", t, "--max-rows", "1"])).unwrap()).collect();
    assert_eq!((both[0]["tokenizer"].as_str(), both[1]["tokenizer"].as_str()), (Some("fast-wordpiece"), Some("tokenizers")));
    assert_eq!((both[0]["rows"].as_u64(), both[0]["tokens"].as_u64()), (Some(1), Some(4)));
    let text = run(&[]);
    assert!(text.contains("2 rows (2 rows without text skipped), 10 tokens, 0 rows cut at max_seq_length 256"), "{text}");
    assert!(text.contains("tokens/s"), "{text}");
}

#[test]
fn tokens_refuses_bad_input_as_embed_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    let mut bytes = b"{\"text\": \"fine\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"text\": \"bad \xff\xfe bytes\"}\n");
    std::fs::write(&data, &bytes).unwrap();
    let o = run_limited(&mut tokens_cmd(&data), 60);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad.jsonl:2:") && e.contains("UTF-8"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    let o = run_limited(tokens_cmd(&data).args(["--threads", "100000"]), 60);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--threads"), "{}", stderr(&o));
}

#[test]
fn a_tokenizer_the_fast_paths_do_not_implement_is_run_by_tokenizers_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    assert!(Command::new("cp").arg("-r").arg(root().join("tests/fixtures/tiny-qwen3-embedding")).arg(&m).status().unwrap().success());
    let path = m.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["normalizer"] = serde_json::json!({"type": "Lowercase"});
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 50);
    let o = run_limited(tokens_with(&data, &m).args(["--tokenizer", "fast"]), 60);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--tokenizer fast") && stderr(&o).contains("normalizer Lowercase"), "{}", stderr(&o));
    let o = run_limited(tokens_with(&data, &m).args(["--json"]).env("RUST_LOG", "info"), 60);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("not one the fast paths implement (normalizer Lowercase)").count(), 1, "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((s["tokenizer"].as_str(), s["rows"].as_u64()), (Some("tokenizers"), Some(50)));
}

#[test]
fn a_megabyte_row_without_spaces_and_nul_bytes_tokenize_like_tokenizers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big.jsonl");
    let rows = [
        "x".repeat(1 << 20),
        "é".repeat(1 << 19),
        "日".repeat(1 << 19),
        format!("a\u{0}b\u{0}\u{0}c {}", "\u{0}".repeat(1000)),
        "\u{0}\u{0}".to_string(),
    ];
    let lines: Vec<String> = rows.iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    for (model, name) in [(model(), "minilm"), (qwen_model(dir.path()), "qwen")] {
        let mut out = Vec::new();
        for t in ["fast", "reference"] {
            let ids = dir.path().join(format!("{name}-{t}.parquet"));
            let o = run_limited(tokens_with(&data, &model).args(["--tokenizer", t, "--json", "--ids-output"]).arg(&ids), 120);
            assert!(o.status.success(), "{}", stderr(&o));
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            out.push(((s["rows"].as_u64(), s["tokens"].as_u64(), s["rows_truncated"].as_u64()), read_ids(&ids)));
        }
        assert_eq!(out[0], out[1], "{name}: same counts and ids");
        if name == "minilm" {
            assert_eq!(out[0].0, (Some(5), Some(2 + 2 + 256 + 5 + 2), Some(1)), "only the CJK row is cut (a long word is one unknown token)");
        } else {
            assert_eq!(out[0].0 .2, Some(4), "BPE cuts the three long rows and the one of a thousand NULs");
        }
    }
}

/// `row_id` and `ids` of a `tokens --ids-output` file.
fn read_ids(path: &Path) -> Vec<(u64, Vec<i32>)> {
    use arrow_array::{Array, Int32Array, ListArray, UInt64Array};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let ids = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        let lists = b.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        for i in 0..b.num_rows() {
            let v = lists.value(i);
            rows.push((ids.value(i), v.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec()));
        }
    }
    rows
}

#[test]
fn noop_tokenized_runs_the_real_tokenizer_on_loader_threads_under_mpirun() {
    let dir = tempfile::tempdir().unwrap();
    let data = rows_jsonl(dir.path(), "d.jsonl", 3000);
    let out = dir.path().join("out");
    let mut cmd = mpirun_cmd(4);
    let o = run_limited(
        io_args(cmd.env("RUST_LOG", "chatspace_mpi::roles=info"), &data, &out).args([
            "--no-progress",
            "--encoder",
            "noop-tokenized",
            "--loader-threads",
            "2",
            "--rows-per-shard",
            "500",
        ]),
        180,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("tokenizer fast-wordpiece, 2 threads"), "{}", stderr(&o));
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!(rows.len(), 3000);
    verify_ok(&out);
}

#[test]
fn embed_gives_the_same_embeddings_with_the_fast_path_and_with_tokenizers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let texts = fresh_corpus(7, 60);
    let lines: Vec<String> = texts.iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let mut outputs = Vec::new();
    for t in ["auto", "reference"] {
        let out = dir.path().join(t);
        let o = run_limited(embed_on(&data, &out).args(["--tokenizer", t]), 300);
        assert!(o.status.success(), "{}", stderr(&o));
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        outputs.push(rows);
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1], "bit for bit: the ids are the same");
}

#[test]
fn rows_cut_at_the_model_length_are_counted_warned_once_and_shown_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let long = "word ".repeat(400);
    let lines: Vec<String> =
        (0..23).map(|i| serde_json::json!({ "text": if i % 8 == 3 { long.clone() } else { format!("short row {i}") } }).to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let o = run_limited(embed_on(&data, &out).args(["--encoder", "noop-tokenized", "--rows-per-shard", "10"]), 120);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with("warning: 3 of the 23 rows this run tokenized were longer than the model's max_seq_length 256"),
        "{}",
        warnings[0]
    );
    let (m, _) = read_output(&out);
    assert_eq!((m.runs[0].rows_truncated, m.runs[0].rows_tokenized), (3, 23));
    let s = run_limited(Command::new(bin()).args(["status", "--json"]).arg(&out), 60);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["rows_truncated"], 3);
}
