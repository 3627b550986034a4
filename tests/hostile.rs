//! Hostile input and hostile output folders, end to end through the binary: every case ends in its documented
//! result (a one-line error naming the flag, file or field with exit 1, or a complete run) within a time
//! limit, never a hang or a panic, and nothing committed is touched.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use common::*;

fn embed(dataset: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut c = embed_cmd();
    c.arg("--dataset").arg(dataset).arg("--model").arg(model()).arg("--output-root").arg(out).arg("--no-progress").args(extra);
    let o = run_limited(&mut c, 60);
    (o.status.code(), stderr(&o))
}

fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in: {stderr}"))
}

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

fn tool(args: &[&Path]) -> (Option<i32>, String) {
    let mut c = std::process::Command::new(bin());
    c.args(args);
    let o = run_limited(&mut c, 30);
    (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)))
}

#[test]
fn number_flags_and_layouts_that_cannot_run_exit_1_naming_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 4);
    let out = d.path().join("out");
    for (flags, names) in [
        (vec!["--loaders", "0"], "--loaders"),
        (vec!["--writers", "0"], "--writers"),
        (vec!["--local-encoders", "100000"], "--local-encoders"),
        (vec!["--loaders", "99999999999"], "--loaders"),
        (vec!["--progress-interval", "inf"], "--progress-interval"),
        (vec!["--drain-timeout", "1e300"], "--drain-timeout"),
        (vec!["--rank-timeout", "1"], "--rank-timeout"),
        (vec!["--rank-timeout=-5"], "--rank-timeout"),
        (vec!["--end-time", "1e300"], "--end-time"),
        (vec!["--batch-size", "999999999"], "--batch-size"),
        (vec!["--threads", "99999999"], "--threads"),
    ] {
        let (code, e) = embed(&data, &out, &flags);
        no_panic(&e);
        assert_eq!(code, Some(1), "{flags:?}: {e}");
        assert!(error_line(&e).contains(names), "{flags:?}: {e}");
    }
    // Under mpirun: a layout without an encoder rank, and a duration no run can use, end every rank.
    for flags in [vec!["--loaders", "2", "--writers", "1"], vec!["--drain-timeout", "inf"]] {
        let mut c = mpirun_cmd(4);
        c.arg("--dataset").arg(&data).arg("--model").arg(model()).arg("--output-root").arg(&out).arg("--no-progress").args(&flags);
        let o = run_limited(&mut c, 60);
        let e = stderr(&o);
        no_panic(&e);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {e}");
        assert!(error_line(&e).contains(flags[0]) || error_line(&e).contains("no encoder"), "{flags:?}: {e}");
    }
    assert!(!out.join("embeddings").exists(), "refused runs write no shard");
}

#[test]
fn links_fifos_and_devices_in_the_output_root_are_refused_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 30);
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A folder of the output linked to somewhere else: refused before anything is written there.
    let out = d.path().join("linked");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("embeddings")).unwrap();
    let (code, e) = embed(&data, &out, &["--encoder", "noop"]);
    assert!(code == Some(1) && error_line(&e).contains("leads outside the output root"), "{e}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the root");

    // The output's lock file replaced by a FIFO: a clear error, not a wait for a writer.
    let out = d.path().join("out");
    let (code, e) = embed(&data, &out, &["--encoder", "noop", "--rows-per-shard", "10"]);
    assert_eq!(code, Some(0), "{e}");
    let mp = manifest_path(&out);
    let idx = mp.parent().unwrap().to_path_buf();
    let lock = idx.join(".lock-train");
    std::fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    let (code, e) = embed(&data, &out, &["--encoder", "noop", "--rows-per-shard", "10", "--resume"]);
    no_panic(&e);
    assert!(code == Some(1) && error_line(&e).contains(".lock-train") && e.contains("not a regular file"), "{e}");
    std::fs::remove_file(&lock).unwrap();

    // A committed shard replaced by a FIFO, a link to /dev/zero, a link to a same-size file outside: `--resume`
    // and `verify` refuse each, naming the shard, and neither blocks.
    let m = chatspace_mpi::manifest::Manifest::read(&mp).unwrap();
    let shard = idx.join(&m.shards[1].path);
    let shard_name = shard.file_name().unwrap().to_string_lossy().into_owned();
    let saved = d.path().join("saved.parquet");
    std::fs::rename(&shard, &saved).unwrap();
    let copy = outside.join("copy.parquet");
    std::fs::copy(&saved, &copy).unwrap();
    for what in ["fifo", "/dev/zero", "outside"] {
        match what {
            "fifo" => mkfifo(&shard),
            "/dev/zero" => std::os::unix::fs::symlink("/dev/zero", &shard).unwrap(),
            _ => std::os::unix::fs::symlink(&copy, &shard).unwrap(),
        }
        let (code, e) = embed(&data, &out, &["--encoder", "noop", "--rows-per-shard", "10", "--resume"]);
        no_panic(&e);
        assert!(code == Some(1) && error_line(&e).contains(&shard_name), "{what}: {e}");
        let (code, e) = tool(&[Path::new("verify"), &mp]);
        let named = e.contains(&shard_name) && (e.contains("not a regular file") || e.contains("symbolic link"));
        assert!(code == Some(1) && named, "{what}: {e}");
        std::fs::remove_file(&shard).unwrap();
    }
    std::fs::rename(&saved, &shard).unwrap();

    // The manifest or its log replaced by a FIFO: `status`, `verify` and `--resume` answer at once.
    let log = idx.join("shards-train.jsonl");
    let saved_log = d.path().join("saved.jsonl");
    std::fs::rename(&log, &saved_log).unwrap();
    mkfifo(&log);
    for args in [vec![Path::new("status"), &mp], vec![Path::new("verify"), &mp]] {
        let (code, e) = tool(&args);
        assert!(code == Some(1) && e.contains("shards-train.jsonl") && e.contains("not a regular file"), "{args:?}: {e}");
    }
    let (code, e) = embed(&data, &out, &["--encoder", "noop", "--rows-per-shard", "10", "--resume"]);
    assert!(code == Some(1) && error_line(&e).contains("not a regular file"), "{e}");
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(&saved_log, &log).unwrap();
    verify_ok(&out);
    let (m2, rows) = read_output(&out);
    check_complete(&m2, &rows);
}

#[test]
fn dataset_folders_with_fifos_links_and_loops() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    rows_jsonl(&data, "a.jsonl", 7);
    // A link back to the folder above: read once, not 40 times.
    std::os::unix::fs::symlink(&data, data.join("sub/loop")).unwrap();
    // A second name for the same file: read once.
    std::os::unix::fs::symlink(data.join("a.jsonl"), data.join("sub/again.jsonl")).unwrap();
    let out = d.path().join("out");
    let (code, e) = embed(&data, &out, &["--encoder", "noop"]);
    assert_eq!(code, Some(0), "{e}");
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!((m.rows_total, m.source.files.len()), (7, 1));

    // A FIFO with a dataset name, in the folder or named directly: an error naming it, not a wait.
    mkfifo(&data.join("b.jsonl"));
    for dataset in [data.clone(), data.join("b.jsonl")] {
        let (code, e) = embed(&dataset, &d.path().join("out2"), &["--encoder", "noop"]);
        no_panic(&e);
        assert!(code == Some(1) && error_line(&e).contains("b.jsonl: not a regular file"), "{e}");
    }
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter_with_nullable(columns.into_iter().map(|(n, c)| (n, c, true))).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The `text` column of every shard, by row id.
fn shard_texts(out: &Path) -> std::collections::BTreeMap<u64, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mp = manifest_path(out);
    let m = chatspace_mpi::manifest::Manifest::read(&mp).unwrap();
    let mut texts = std::collections::BTreeMap::new();
    for s in m.shards.iter().filter(|s| s.has_file()) {
        let f = std::fs::File::open(mp.parent().unwrap().join(&s.path)).unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
            let b = b.unwrap();
            let ids = b.column_by_name("row_id").unwrap().as_any().downcast_ref::<arrow_array::UInt64Array>().unwrap().clone();
            let t = b.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
            texts.extend((0..b.num_rows()).map(|i| (ids.value(i), t.value(i).to_string())));
        }
    }
    texts
}

#[test]
fn dictionary_and_null_text_columns_and_chat_content_parts_embed() {
    use arrow_array::types::Int32Type;
    let d = tempfile::tempdir().unwrap();
    let texts = [Some("the cat sat"), None, Some("a dog ran"), Some("the cat sat")];
    // A dictionary-encoded text column (pandas categoricals) embeds exactly like the plain column.
    let dict: arrow_array::DictionaryArray<Int32Type> = texts.into_iter().collect();
    let (plain, encoded) = (d.path().join("plain.parquet"), d.path().join("dict.parquet"));
    write_parquet(&plain, vec![("text", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef)]);
    write_parquet(&encoded, vec![("text", Arc::new(dict) as ArrayRef)]);
    let mut outputs = Vec::new();
    for (i, p) in [&plain, &encoded].into_iter().enumerate() {
        let out = d.path().join(format!("out{i}"));
        let (code, e) = embed(p, &out, &[]);
        assert_eq!(code, Some(0), "{e}");
        let (m, rows) = read_output(&out);
        check_complete(&m, &rows);
        assert_eq!((m.rows_embedded, m.rows_skipped), (3, 1));
        outputs.push(rows);
    }
    assert_eq!(outputs[0], outputs[1], "a dictionary column embeds as its plain form");

    // A column of type Null: every row skipped, the run complete.
    let nulls = d.path().join("nulls.parquet");
    write_parquet(
        &nulls,
        vec![
            ("text", Arc::new(arrow_array::NullArray::new(3)) as ArrayRef),
            ("id", Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ],
    );
    let out = d.path().join("out-null");
    let (code, e) = embed(&nulls, &out, &[]);
    assert_eq!(code, Some(0), "{e}");
    let (m, _) = read_output(&out);
    assert_eq!((m.rows_embedded, m.rows_skipped, m.rows_total), (0, 3, 3));

    // Chat content as a list of parts (the OpenAI / HF multimodal form): the text parts, joined.
    let chat = d.path().join("chat.jsonl");
    std::fs::write(
        &chat,
        concat!(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":[{"type":"text","text":"first part"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"second part"}]}]}"#,
            "\n",
            r#"{"messages":[{"role":"assistant","content":"a plain answer"}]}"#,
            "\n",
            r#"{"messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"u"}}]}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = d.path().join("out-chat");
    let (code, e) = embed(&chat, &out, &["--text-field", "messages", "--chat-format", "first-assistant"]);
    assert_eq!(code, Some(0), "{e}");
    let (m, rows) = read_output(&out);
    check_complete(&m, &rows);
    assert_eq!((m.rows_embedded, m.rows_skipped), (2, 1));
    let t = shard_texts(&out);
    assert_eq!(t.get(&0).map(String::as_str), Some("first part\nsecond part"));
    assert_eq!(t.get(&1).map(String::as_str), Some("a plain answer"));
}

#[test]
fn status_and_verify_into_a_closed_pipe_end_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let data = rows_jsonl(d.path(), "d.jsonl", 3);
    let out = d.path().join("out");
    let (code, e) = embed(&data, &out, &["--encoder", "noop"]);
    assert_eq!(code, Some(0), "{e}");
    for cmd in ["status", "verify"] {
        // The reading end is gone before the command writes (as with `... | head -0`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = std::process::Command::new(bin()).arg(cmd).arg(manifest_path(&out)).stdout(writer).output().unwrap();
        let e = stderr(&o);
        no_panic(&e);
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{cmd}: {:?} {e}", o.status);
    }
}
