//! `verify` and `status`: reading a manifest and its shards back, without MPI.

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, UInt64Array};
use arrow_schema::DataType;

use crate::manifest::{Manifest, ShardEntry, Status};
use crate::output::resolve_shard_path;
use crate::ranges;

/// Checks one shard file against its manifest entry; returns problems.
fn check_shard(manifest: &Path, m: &Manifest, s: &ShardEntry) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |msg: String| problems.push(format!("{}: {msg}", s.path));
    let path = match resolve_shard_path(manifest, &s.path) {
        Ok(p) => p,
        Err(e) => {
            bad(e);
            return problems;
        }
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            bad(format!("cannot read: {e}"));
            return problems;
        }
    };
    if bytes.len() as u64 != s.bytes {
        bad(format!("{} bytes, manifest says {}", bytes.len(), s.bytes));
    }
    use sha2::Digest;
    let sha = crate::model::hex(&sha2::Sha256::digest(&bytes));
    if sha != s.sha256 {
        bad(format!("sha256 {sha}, manifest says {}", s.sha256));
        return problems;
    }
    if s.embedding_dim != m.embedding_dim {
        bad(format!("embedding_dim {} differs from the manifest's {}", s.embedding_dim, m.embedding_dim));
    }
    let normalized = ranges::normalize(s.row_ranges.clone());
    if normalized != s.row_ranges {
        bad("row_ranges are not sorted and disjoint".into());
    }
    if ranges::total(&s.row_ranges) != s.rows + s.rows_skipped {
        bad(format!("row_ranges cover {} rows but rows + rows_skipped = {}", ranges::total(&s.row_ranges), s.rows + s.rows_skipped));
    }
    let reader = match parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).expect("read above")) {
        Ok(b) => b,
        Err(e) => {
            bad(format!("not a valid Parquet file: {e}"));
            return problems;
        }
    };
    let schema = reader.schema().clone();
    let want_emb = |t: &DataType| matches!(t, DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float32 && *n as usize == m.embedding_dim);
    match (schema.field_with_name("row_id"), schema.field_with_name("text"), schema.field_with_name("embedding")) {
        (Ok(r), Ok(t), Ok(e)) if r.data_type() == &DataType::UInt64 && t.data_type() == &DataType::Utf8 && want_emb(e.data_type()) => {}
        _ => {
            bad(format!("schema is not row_id uint64, text utf8, embedding fixed_size_list<float32, {}>", m.embedding_dim));
            return problems;
        }
    }
    let mask = parquet::arrow::ProjectionMask::columns(reader.parquet_schema(), ["row_id"]);
    let reader = match reader.with_projection(mask).build() {
        Ok(r) => r,
        Err(e) => {
            bad(format!("cannot read rows: {e}"));
            return problems;
        }
    };
    let (mut n, mut last, mut outside) = (0u64, None::<u64>, 0u64);
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                bad(format!("cannot decode rows: {e}"));
                return problems;
            }
        };
        let ids = batch.column(0).as_any().downcast_ref::<UInt64Array>().expect("row_id is uint64 (checked)");
        for i in 0..ids.len() {
            let id = ids.value(i);
            if last.is_some_and(|l| id <= l) {
                bad(format!("row ids not strictly increasing at row {id} (duplicate or unsorted)"));
                return problems;
            }
            last = Some(id);
            if !ranges::contains(&s.row_ranges, id) {
                outside += 1;
            }
            n += 1;
        }
    }
    if outside > 0 {
        bad(format!("{outside} row ids outside the shard's row_ranges"));
    }
    if n != s.rows {
        bad(format!("{n} rows in the file, manifest says {}", s.rows));
    }
    problems
}

/// Every problem of a manifest and its shards; empty when all is consistent.
pub fn verify(manifest: &Path) -> Result<(Manifest, Vec<String>), String> {
    let m = Manifest::read(manifest)?;
    let mut problems = Vec::new();
    let mut covered: Vec<ranges::Range> = Vec::new();
    for s in &m.shards {
        problems.extend(check_shard(manifest, &m, s));
        let mine = ranges::normalize(s.row_ranges.clone());
        if ranges::overlaps(&ranges::normalize(covered.clone()), &mine) {
            problems.push(format!("{}: rows overlap another shard's (rows would be duplicated)", s.path));
        }
        if mine.last().is_some_and(|r| r.1 > m.rows_total) {
            problems.push(format!("{}: rows beyond rows_total {}", s.path, m.rows_total));
        }
        covered.extend(mine);
    }
    let covered = ranges::normalize(covered);
    if m.shards.iter().map(|s| s.rows).sum::<u64>() != m.rows_embedded {
        problems.push(format!("rows_embedded {} differs from the shards' sum", m.rows_embedded));
    }
    if m.shards.iter().map(|s| s.rows_skipped).sum::<u64>() != m.rows_skipped {
        problems.push(format!("rows_skipped {} differs from the shards' sum", m.rows_skipped));
    }
    if m.status == Status::Complete {
        let missing = ranges::subtract(&[(0, m.rows_total)], &covered);
        if !missing.is_empty() {
            problems.push(format!("status is complete but rows {} are not covered", show_ranges(&missing)));
        }
    }
    Ok((m, problems))
}

fn show_ranges(r: &[ranges::Range]) -> String {
    let parts: Vec<String> = r.iter().take(5).map(|(a, b)| format!("{a}..{b}")).collect();
    if r.len() > 5 { format!("{} and {} more ranges", parts.join(", "), r.len() - 5) } else { parts.join(", ") }
}

pub fn verify_command(manifest: &Path) -> i32 {
    match verify(manifest) {
        Err(e) => {
            eprintln!("error: {e}");
            crate::EXIT_FAILED
        }
        Ok((m, problems)) if problems.is_empty() => {
            println!(
                "ok: {} shards, {} rows embedded, {} skipped, {}/{} rows covered, status {}",
                m.shards.len(),
                m.rows_embedded,
                m.rows_skipped,
                m.rows_done(),
                m.rows_total,
                status_name(m.status)
            );
            crate::EXIT_OK
        }
        Ok((_, problems)) => {
            eprintln!("error: {} problem(s) in {}:", problems.len(), manifest.display());
            for p in &problems {
                eprintln!("  {p}");
            }
            crate::EXIT_FAILED
        }
    }
}

fn status_name(s: Status) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Human-readable state of a run.
pub fn status_text(m: &Manifest) -> String {
    let done = m.rows_done();
    let left = m.rows_total.saturating_sub(done);
    let mut out = format!(
        "status: {}\nrows: {done}/{} done ({:.1}%), {} embedded, {} skipped, {left} remaining\nshards: {}\nruns: {}\n",
        status_name(m.status),
        m.rows_total,
        100.0 * done as f64 / m.rows_total.max(1) as f64,
        m.rows_embedded,
        m.rows_skipped,
        m.shards.len(),
        m.runs.len()
    );
    for (i, r) in m.runs.iter().enumerate() {
        let rate = if r.duration_seconds > 0.0 { r.rows_embedded as f64 / r.duration_seconds } else { 0.0 };
        out += &format!(
            "  {}. {} start {} end {} world_size {} restart {} exit {} rows {} in {:.1}s ({rate:.1} rows/s, first batch after {}){}\n",
            i + 1,
            r.run_id,
            r.started_at,
            r.ended_at.as_deref().unwrap_or("-"),
            r.world_size,
            r.restart_count.map_or("-".to_string(), |c| c.to_string()),
            r.exit.as_deref().unwrap_or("none (still running, or killed)"),
            r.rows_embedded,
            r.duration_seconds,
            r.first_batch_seconds.map_or("-".to_string(), |s| format!("{s:.1}s")),
            match (&r.deadline, r.drain_estimate_seconds) {
                (Some(d), Some(e)) => format!(" job end {d}, drain estimate {e:.1}s"),
                (Some(d), None) => format!(" job end {d}"),
                _ => String::new(),
            }
        );
    }
    let last = m.runs.iter().rev().find(|r| r.duration_seconds > 0.0 && r.rows_embedded > 0);
    match last {
        Some(r) => {
            let rate = r.rows_embedded as f64 / r.duration_seconds;
            out += &format!("throughput (last run): {rate:.1} rows/s\nestimated time left: {:.0}s\n", left as f64 / rate);
        }
        None => out += "throughput (last run): unknown\nestimated time left: unknown\n",
    }
    out
}

pub fn status_command(manifest: &Path) -> i32 {
    match Manifest::read(manifest) {
        Ok(m) => {
            print!("manifest: {}\n{}", manifest.display(), status_text(&m));
            crate::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_progress_and_time_left() {
        let mut m = crate::manifest::tests_support::empty_manifest();
        m.rows_total = 100;
        m.status = Status::Preempted;
        m.runs.push(crate::manifest::RunRecord {
            run_id: "r1".into(),
            started_at: "a".into(),
            ended_at: Some("b".into()),
            world_size: 4,
            layout: String::new(),
            exit: Some("preempted: SIGUSR1 on rank 0".into()),
            restart_count: Some(1),
            rows_embedded: 40,
            duration_seconds: 4.0,
            first_batch_seconds: Some(1.5),
            deadline: Some("2026-11-27T12:00:00.000Z".into()),
            drain_estimate_seconds: Some(2.5),
        });
        m.shards.push(crate::manifest::tests_support::shard(0, 0, vec![(0, 40)], 2));
        m.rows_embedded = 38;
        let t = status_text(&m);
        assert!(t.contains("rows: 40/100 done (40.0%)"), "{t}");
        assert!(t.contains("60 remaining"), "{t}");
        assert!(t.contains("world_size 4 restart 1"), "{t}");
        assert!(t.contains("job end 2026-11-27T12:00:00.000Z, drain estimate 2.5s"), "{t}");
        assert!(t.contains("10.0 rows/s") && t.contains("estimated time left: 6s"), "{t}");
    }
}
