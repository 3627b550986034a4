//! The run's durable record as it goes: each committed shard is one line appended to the shard log and
//! fsynced before the commit counts; the small manifest header is rewritten (tmp -> fsync -> rename) at most
//! every [`HEADER_EVERY`] and when the run ends. A commit writes one line, whatever the number of shards
//! before it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::manifest::{encode_line, now_rfc3339, Manifest, ShardEntry, FORMAT_VERSION};
use crate::output::write_atomic;

/// Longest time the header's totals lag the log during a run.
pub const HEADER_EVERY: Duration = Duration::from_secs(5);

pub struct Checkpoint {
    path: PathBuf,
    log_path: PathBuf,
    log: File,
    /// Bytes of the log (every one of them fsynced).
    log_len: u64,
    /// The header (its `shards` stay empty: entries live in the log only).
    pub manifest: Manifest,
    last_header: Instant,
    bytes_written: u64,
    commits: u64,
}

fn log_path_of(path: &Path, m: &Manifest) -> std::io::Result<PathBuf> {
    m.log_path(path).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Opens the log for appending: not through a link, and only a regular file (a FIFO would block).
fn open_append(path: &Path) -> std::io::Result<File> {
    crate::output::open_own(path, std::fs::OpenOptions::new().append(true))
}

impl Checkpoint {
    /// The checkpoint of a new output: an empty log, then the header.
    pub fn create(path: &Path, mut manifest: Manifest) -> std::io::Result<Checkpoint> {
        manifest.format_version = FORMAT_VERSION;
        let log_path = log_path_of(path, &manifest)?;
        write_atomic(&log_path, b"")?;
        Checkpoint::open(path, log_path, 0, manifest)
    }

    /// Continues a manifest read by [`Manifest::read`] for a resume: a torn last line of the log is cut off
    /// (its rows are not covered, so the run redoes them), and a version-1 manifest's shards become the log
    /// (written in full, once). Then the header is written in this version's format.
    pub fn resume(path: &Path, mut manifest: Manifest) -> std::io::Result<Checkpoint> {
        let log_path = log_path_of(path, &manifest)?;
        let log_len = if manifest.log.read_version < FORMAT_VERSION {
            let lines: Vec<u8> = manifest.shards.iter().flat_map(encode_line).collect();
            write_atomic(&log_path, &lines)?;
            log::info!(
                "{}: moved {} shard entries from the version-{} manifest to {}",
                path.display(),
                manifest.shards.len(),
                manifest.log.read_version,
                log_path.display()
            );
            lines.len() as u64
        } else {
            if let Some((line, bytes)) = manifest.log.torn {
                let f = crate::output::open_own(&log_path, std::fs::OpenOptions::new().write(true))?;
                f.set_len(manifest.log.valid_len)?;
                f.sync_all()?;
                eprintln!(
                    "warning: {}: line {line} ({bytes} bytes) was torn by a crash before its commit counted; cut off, its rows are redone",
                    log_path.display()
                );
            }
            manifest.log.valid_len
        };
        manifest.format_version = FORMAT_VERSION;
        manifest.shards = Vec::new();
        Checkpoint::open(path, log_path, log_len, manifest)
    }

    fn open(path: &Path, log_path: PathBuf, log_len: u64, manifest: Manifest) -> std::io::Result<Checkpoint> {
        let log = open_append(&log_path)?;
        let mut c =
            Checkpoint { path: path.to_path_buf(), log_path, log, log_len, manifest, last_header: Instant::now(), bytes_written: 0, commits: 0 };
        c.write_header()?;
        Ok(c)
    }

    /// Commits a shard: its line is appended and fsynced, then it counts. The header follows when it is due.
    pub fn commit(&mut self, entry: &ShardEntry) -> std::io::Result<()> {
        let line = encode_line(entry);
        if let Err(e) = self.log.write_all(&line).and_then(|()| self.log.sync_data()) {
            // Leave no partial line behind where the file system lets us (a later resume would cut it anyway).
            let _ = self.log.set_len(self.log_len);
            return Err(std::io::Error::new(e.kind(), format!("{}: {e}", self.log_path.display())));
        }
        self.log_len += line.len() as u64;
        self.bytes_written += line.len() as u64;
        self.commits += 1;
        self.manifest.count_shard(entry);
        if self.last_header.elapsed() >= HEADER_EVERY {
            self.write_header()?;
        }
        Ok(())
    }

    /// Rewrites the header now (tmp -> fsync -> rename).
    pub fn write_header(&mut self) -> std::io::Result<()> {
        self.manifest.updated_at = now_rfc3339();
        let bytes = self.manifest.header_bytes();
        write_atomic(&self.path, &bytes).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        self.bytes_written += bytes.len() as u64;
        self.last_header = Instant::now();
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes this checkpoint wrote (log lines and headers), and the commits among them.
    pub fn written(&self) -> (u64, u64) {
        (self.bytes_written, self.commits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests_support::{empty_manifest, shard};

    #[test]
    fn commits_append_one_line_each_and_the_header_follows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("manifest-train.json");
        let mut c = Checkpoint::create(&p, empty_manifest()).unwrap();
        let header = std::fs::metadata(&p).unwrap().len();
        let mut sizes = Vec::new();
        for i in 0..200 {
            c.commit(&shard(i, i, vec![(i * 10, i * 10 + 10)], 0)).unwrap();
            sizes.push(std::fs::metadata(d.path().join("shards-train.jsonl")).unwrap().len());
        }
        // Each commit adds one line of about the same size (numbers grow a digit now and then): nothing
        // grows with the shards before it.
        let steps: Vec<u64> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|&s| s >= steps[0] && s <= steps[0] + 16), "{steps:?}");
        let (bytes, commits) = c.written();
        assert_eq!(commits, 200);
        assert!(bytes < header + sizes[199] + 1, "no header rewrite within {HEADER_EVERY:?}: {bytes}");
        // The header on disk lags; reading recounts from the log.
        assert_eq!(Manifest::read(&p).unwrap().num_shards, 200);
        c.write_header().unwrap();
        let back = Manifest::read(&p).unwrap();
        assert_eq!((back.num_shards, back.rows_embedded, back.shards.len()), (200, 2000, 200));
        assert!(std::fs::metadata(&p).unwrap().len() < 8192, "the header holds no shards");
    }

    #[test]
    fn resume_cuts_a_torn_line_and_migrates_version_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("manifest-train.json");
        let log = d.path().join("shards-train.jsonl");
        let mut c = Checkpoint::create(&p, empty_manifest()).unwrap();
        c.commit(&shard(0, 0, vec![(0, 10)], 0)).unwrap();
        drop(c);
        let good = std::fs::read(&log).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(&encode_line(&shard(1, 1, vec![(10, 20)], 0))[..30]);
        std::fs::write(&log, &torn).unwrap();
        let m = Manifest::read(&p).unwrap();
        assert!(m.log.torn.is_some());
        let mut c = Checkpoint::resume(&p, m).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), good, "the torn tail is gone");
        c.commit(&shard(2, 1, vec![(10, 20)], 0)).unwrap();
        let m = Manifest::read(&p).unwrap();
        assert_eq!(m.shards.iter().map(|s| s.shard_index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(m.log.torn, None);
        // A version-1 manifest: its shards move to a new log.
        let mut v1 = m.clone();
        v1.log.read_version = 1;
        std::fs::remove_file(&log).unwrap();
        let c = Checkpoint::resume(&p, v1).unwrap();
        drop(c);
        let m2 = Manifest::read(&p).unwrap();
        assert_eq!(m2.shards, m.shards);
        assert_eq!(m2.log.read_version, FORMAT_VERSION);
    }
}
