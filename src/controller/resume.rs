//! `--resume` in metadata time: the manifest and its shard log are read and checked (fingerprint, every shard
//! present as a regular file of its recorded size, the Parquet footers of the shards committed last, no row
//! in two shards), then what interrupted runs left behind is removed. Nothing reads shard data: the full
//! sha256 check is `chatspace-mpi verify`'s.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use crate::manifest::{Fingerprint, Manifest, ShardEntry};
use crate::output::{normalize_lexically, resolve_shard_path};
use crate::plan::Plan;

/// Shards at the end of the log whose Parquet footer is read: those committed last before a stop, which a
/// crash on a file system that loses writes would tear first.
pub const FOOTER_CHECKS: usize = 64;

/// Reads the manifest to resume, refusing anything that would lose or duplicate rows: other settings, a
/// shard that is missing, of another size or not a regular file, a torn footer, a path outside the output,
/// overlapping shards. `fingerprint` is this run's. Then removes leftovers (temporaries, shard files the log does not name).
pub fn check(plan: &Plan, fingerprint: &Fingerprint) -> anyhow::Result<Manifest> {
    let path = &plan.output.manifest;
    if !path.exists() {
        bail!("--resume: no manifest at {} (nothing to resume; run without --resume)", path.display());
    }
    let m = Manifest::read(path).map_err(|e| anyhow!("--resume: {e}"))?;
    let diffs = m.fingerprint.differences(fingerprint);
    if !diffs.is_empty() {
        bail!("--resume: {} was made with other settings: {}", path.display(), diffs.join("; "));
    }
    let mut named = HashSet::with_capacity(m.shards.len());
    let mut folders = HashSet::new();
    for (i, s) in m.shards.iter().enumerate() {
        if let Some(&(_, end)) = s.row_ranges.last().filter(|r| r.1 > m.rows_total) {
            bail!("--resume: shard {} covers rows up to {end}, beyond the {} rows of the run; the manifest is inconsistent", s.label(), m.rows_total);
        }
        if !s.has_file() {
            continue;
        }
        let p = resolve_shard_path(path, &s.path).map_err(|e| anyhow!("--resume: {}: {e}", path.display()))?;
        if let Some(dir) = p.parent().filter(|d| folders.insert(d.to_path_buf())) {
            crate::output::check_inside_root(&plan.config.output_root, dir).map_err(|e| anyhow!("--resume: {e}"))?;
        }
        check_file(&p, s, i + FOOTER_CHECKS >= m.shards.len())?;
        named.insert(p);
    }
    if let Some(&(a, b)) = m.overlapping_shards().first() {
        bail!("--resume: shards {} and {} cover the same rows; the manifest is inconsistent", m.shards[a].label(), m.shards[b].label());
    }
    remove_leftovers(plan, &named)?;
    Ok(m)
}

/// A committed shard must be a regular file (not followed through a link) of its recorded size; with
/// `footer`, its Parquet footer must read and count its rows.
fn check_file(p: &Path, s: &ShardEntry, footer: bool) -> anyhow::Result<()> {
    let refuse = |what: String| anyhow!("--resume: shard {} named by the manifest {what}; refusing to continue (run `chatspace-mpi verify`)", s.path);
    let meta = std::fs::symlink_metadata(p).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file (a link, folder, FIFO or device)".into()));
    }
    if meta.len() != s.bytes {
        return Err(refuse(format!("does not match the manifest: {} bytes, the manifest says {}", meta.len(), s.bytes)));
    }
    if footer {
        use parquet::file::reader::FileReader;
        let file = crate::output::open_regular(p).map_err(|e| refuse(format!("cannot be read: {e}")))?;
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(file).map_err(|e| refuse(format!("has no valid Parquet footer: {e}")))?;
        let rows = reader.metadata().file_metadata().num_rows();
        if u64::try_from(rows).ok() != Some(s.rows) {
            return Err(refuse(format!("does not match the manifest: its footer counts {rows} rows, the manifest {}", s.rows)));
        }
    }
    Ok(())
}

/// Removes uncommitted shard files and temporaries of interrupted runs.
fn remove_leftovers(plan: &Plan, named: &HashSet<PathBuf>) -> anyhow::Result<()> {
    let mut removed = 0;
    let shard_dir = normalize_lexically(&plan.output.shard_dir);
    if let Ok(dir) = std::fs::read_dir(&plan.output.shard_dir) {
        for entry in dir.flatten() {
            let kind = entry.file_type()?;
            if (kind.is_file() || kind.is_symlink()) && !named.contains(&shard_dir.join(entry.file_name())) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    if let Some(idx) = plan.output.manifest.parent() {
        for entry in std::fs::read_dir(idx)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    if removed > 0 {
        log::warn!("--resume: removed {removed} uncommitted file(s) left by an interrupted run");
    }
    Ok(())
}
