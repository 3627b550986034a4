//! Output layout (`{root}/embeddings/{M}/{D}/{S}/shard-{i:05d}.parquet`; `manifest-{S}.json` and `shards-{S}.jsonl`
//! in `{root}/indexes/{M}/{D}/`) and durable file writes (tmp -> fsync -> rename -> fsync dir).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Keeps alphanumerics, '-' and '_'; '/' becomes "__", other characters '-'; runs of "--" collapse; '-' is
/// trimmed from both ends; an empty result is "unnamed". (The Python original's rule.)
pub fn sanitize(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => s.push(c),
            '/' => s.push_str("__"),
            _ => s.push('-'),
        }
    }
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-');
    if s.is_empty() {
        "unnamed".into()
    } else {
        s.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputPaths {
    pub root: PathBuf,
    /// `embeddings/{M}/{D}/{S}` under root.
    pub shard_dir: PathBuf,
    pub manifest: PathBuf,
    /// The append-only log of committed shards, beside the manifest.
    pub shard_log: PathBuf,
    pub run_summary: PathBuf,
    /// Shard paths in the manifest are relative to the manifest's folder; this is that prefix.
    pub shard_prefix: String,
}

impl OutputPaths {
    pub fn new(root: &Path, model: &str, dataset: &str, subset: Option<&str>, split: &str) -> Self {
        let m = sanitize(model);
        let d = match subset {
            Some(s) => sanitize(&format!("{dataset}__{s}")),
            None => sanitize(dataset),
        };
        let s = sanitize(split);
        let index_dir = root.join("indexes").join(&m).join(&d);
        OutputPaths {
            root: root.to_path_buf(),
            shard_dir: root.join("embeddings").join(&m).join(&d).join(&s),
            manifest: index_dir.join(format!("manifest-{s}.json")),
            shard_log: index_dir.join(format!("shards-{s}.jsonl")),
            run_summary: index_dir.join(format!("run-{s}.json")),
            shard_prefix: format!("../../../embeddings/{m}/{d}/{s}"),
        }
    }

    pub fn shard_name(index: u64) -> String {
        format!("shard-{index:05}.parquet")
    }

    pub fn shard_path(&self, index: u64) -> PathBuf {
        self.shard_dir.join(Self::shard_name(index))
    }

    /// The shard's path as the manifest records it.
    pub fn shard_entry_path(&self, index: u64) -> String {
        format!("{}/{}", self.shard_prefix, Self::shard_name(index))
    }
}

/// Default dataset name for a local path: the file stem, the folder name, or a glob's last plain folder.
pub fn dataset_name(dataset: &str) -> String {
    let plain: PathBuf = Path::new(dataset).components().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '['])).collect();
    let p = std::fs::canonicalize(&plain).unwrap_or(plain);
    let name = if p.is_file() { p.file_stem() } else { p.file_name() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into())
}

/// Writes `bytes` to `path` durably: a temporary file in the same folder, fsync, rename, fsync the folder.
/// Readers see the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomically(path, |tmp| write_synced(tmp, bytes))
}

/// Like [`write_atomic`], for large files (shards): when the file system takes direct I/O, the bytes go from
/// `bytes` to the disk without a copy into the page cache (the copy is most of the writer's system time,
/// and the page cache would only hold data nobody reads back). File systems that refuse `O_DIRECT` (EINVAL)
/// get a plain buffered write; either way the file is fsynced before the rename.
pub fn write_atomic_large(path: &Path, bytes: &AlignedBytes) -> std::io::Result<()> {
    atomically(path, |tmp| {
        if write_direct(tmp, bytes)? {
            return Ok(());
        }
        remove_if_there(tmp)?;
        write_synced(tmp, bytes.as_slice())
    })
}

/// Creates `path` (which must not exist: nothing is written through a link), writes `bytes` and fsyncs the file.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Runs `write` on a temporary path next to `path`, then renames it over `path` and fsyncs the folder; the
/// temporary is removed on failure.
fn atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    // A bare file name has the empty path as its parent: the current folder.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        // A leftover of an earlier process with this pid, or a link put there: removed (a link itself, not
        // what it points to), then the temporary is created anew.
        remove_if_there(&tmp)?;
        write(&tmp)?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file or link if there is one.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Alignment of buffers, offsets and lengths for `O_DIRECT`: the larger of 4 KiB (any disk's logical block)
/// and the memory page size.
pub fn direct_align() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page.max(0) as usize).max(4096)
}

/// A growable byte buffer whose contents start at a [`direct_align`]-aligned address (when it has not had
/// to grow past the capacity it was made with), so it can be written with `O_DIRECT` without a copy.
pub struct AlignedBytes {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBytes {
    pub fn with_capacity(capacity: usize) -> AlignedBytes {
        let align = direct_align();
        let mut raw: Vec<u8> = Vec::with_capacity(capacity + align);
        let start = raw.as_ptr().align_offset(align);
        raw.resize(start, 0);
        AlignedBytes { raw, start }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..]
    }

    pub fn len(&self) -> usize {
        self.raw.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Write for AlignedBytes {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.raw.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `bytes` to a new file at `tmp` with `O_DIRECT` and fsyncs it. `Ok(false)` when direct I/O is not
/// possible here (the file system refuses it, or the buffer lost its alignment): the caller writes normally.
fn write_direct(tmp: &Path, bytes: &AlignedBytes) -> std::io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let align = direct_align();
    let data = bytes.as_slice();
    if data.as_ptr().align_offset(align) != 0 {
        return Ok(false);
    }
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let f = match std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(tmp) {
        Ok(f) => f,
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    // The aligned body straight from the buffer; the last partial block padded with zeros in an aligned
    // block of its own, then the file cut back to its length.
    let body = data.len() / align * align;
    let mut tail = AlignedBytes::with_capacity(align);
    tail.raw.extend_from_slice(&data[body..]);
    let padded = tail.len().next_multiple_of(align);
    tail.raw.resize(tail.start + padded, 0);
    for (at, part) in [(0, &data[..body]), (body, tail.as_slice())] {
        if part.is_empty() {
            continue;
        }
        match f.write_all_at(part, at as u64) {
            Ok(()) => {}
            // Nothing is lost by starting over with a buffered write (the file is a temporary).
            Err(e) if refused(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    f.set_len(data.len() as u64)?;
    f.sync_all()?;
    Ok(true)
}

/// Opens `path` for reading only if it is a regular file: a symbolic link is not followed, and a FIFO or
/// device is refused before anything blocks on it.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    open_checked(path, std::fs::OpenOptions::new().read(true), false)
}

/// Opens an input file (dataset, model folder) for reading, following symbolic links (Hugging Face caches are
/// made of them) but only to a regular file: a FIFO, socket, device or folder is refused before anything
/// blocks on it.
pub fn open_input(path: &Path) -> std::io::Result<File> {
    open_checked(path, std::fs::OpenOptions::new().read(true), true)
}

/// Opens one of the program's own files in the output root (lock, shard log) with `options`: a symbolic
/// link is not followed and anything but a regular file is refused, without blocking on a FIFO.
pub fn open_own(path: &Path, options: &mut std::fs::OpenOptions) -> std::io::Result<File> {
    open_checked(path, options, false)
}

fn open_checked(path: &Path, options: &mut std::fs::OpenOptions, follow: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if follow { libc::O_NONBLOCK } else { libc::O_NOFOLLOW | libc::O_NONBLOCK };
    let file = options.custom_flags(flags).open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) if !follow => std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a symbolic link; refusing to follow it"),
        // Opening a FIFO without a reader for writing, non-blocking.
        Some(libc::ENXIO) => std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file (a FIFO, socket or device)"),
        _ => e,
    })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a folder" } else { "a FIFO, socket or device" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("not a regular file ({what})")));
    }
    Ok(file)
}

/// Reads a regular file (see [`open_regular`]) of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_bounded(open_regular(path)?, max)
}

/// Reads an input file (see [`open_input`]) of at most `max` bytes.
pub fn read_input(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_bounded(open_input(path)?, max)
}

fn read_bounded(file: File, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let len = file.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{len} bytes, more than the {max} this file may have")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("grew past {max} bytes while read")));
    }
    Ok(bytes)
}

/// Checks that `dir`, a folder under `root` (`root` itself may be a link), resolves to a place inside `root`:
/// a folder of the output linked to somewhere else would have shards written or read outside the output root.
/// A folder that does not exist yet is judged by its nearest existing parent.
pub fn check_inside_root(root: &Path, dir: &Path) -> Result<(), String> {
    let real_root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(root);
    let real = std::fs::canonicalize(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    if real.starts_with(&real_root) {
        Ok(())
    } else {
        Err(format!("{} leads outside the output root {} (to {}): a folder in it is a symbolic link", dir.display(), root.display(), real.display()))
    }
}

/// Removes `.` and `..` components without touching the file system.
pub fn normalize_lexically(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The output root of a manifest at `{root}/indexes/{M}/{D}/manifest-{S}.json`.
pub fn root_of_manifest(manifest: &Path) -> PathBuf {
    normalize_lexically(&manifest.join("../../../.."))
}

/// A shard path from a manifest, resolved; refused if absolute or if it leaves `{root}/embeddings`.
pub fn resolve_shard_path(manifest: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(format!("shard path {rel} is absolute; shard paths must be relative to the manifest"));
    }
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let resolved = normalize_lexically(&dir.join(p));
    let inside = root_of_manifest(manifest).join("embeddings");
    if !resolved.starts_with(&inside) {
        return Err(format!("shard path {rel} points outside the output root ({})", inside.display()));
    }
    Ok(resolved)
}

/// Checks that a folder can be created and written to (creates it).
pub fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    remove_if_there(&probe)?;
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(bytes: &[u8]) -> AlignedBytes {
        let mut b = AlignedBytes::with_capacity(bytes.len());
        b.write_all(bytes).unwrap();
        b
    }

    #[test]
    fn large_writes_keep_every_byte_for_any_length() {
        let d = tempfile::tempdir().unwrap();
        let align = direct_align();
        for len in [0, 1, 4095, align, align + 1, 3 * align + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let b = aligned(&bytes);
            assert_eq!(b.as_slice().as_ptr().align_offset(align), 0);
            let path = d.path().join(format!("f{len}"));
            write_atomic_large(&path, &b).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "length {len}");
        }
        // No temporaries left behind.
        assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    }

    #[test]
    fn a_buffer_that_lost_its_alignment_is_written_the_buffered_way() {
        let d = tempfile::tempdir().unwrap();
        let mut b = aligned(b"xabcdef");
        b.start += 1; // contents now start one byte past an aligned address
        assert!(!write_direct(&d.path().join("t"), &b).unwrap());
        let path = d.path().join("f");
        write_atomic_large(&path, &b).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        // Growing past the first capacity may move the contents anywhere; the bytes are still right.
        let mut g = AlignedBytes::with_capacity(1);
        let big: Vec<u8> = (0..100_000).map(|i| i as u8).collect();
        g.write_all(&big).unwrap();
        write_atomic_large(&path, &g).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), big);
    }

    #[test]
    fn sanitize_follows_the_original_rules() {
        assert_eq!(sanitize("Qwen/Qwen3-Embedding-0.6B"), "Qwen__Qwen3-Embedding-0-6B");
        assert_eq!(sanitize("a  b!!c"), "a-b-c");
        assert_eq!(sanitize("--x--"), "x");
        assert_eq!(sanitize("..."), "unnamed");
        assert_eq!(sanitize("HuggingFaceTB/smoltalk__all"), "HuggingFaceTB__smoltalk__all");
    }

    #[test]
    fn layout_paths() {
        let o = OutputPaths::new(Path::new("/o"), "all-MiniLM-L6-v2", "sample", Some("en"), "train");
        assert_eq!(o.shard_path(3), Path::new("/o/embeddings/all-MiniLM-L6-v2/sample__en/train/shard-00003.parquet"));
        assert_eq!(o.manifest, Path::new("/o/indexes/all-MiniLM-L6-v2/sample__en/manifest-train.json"));
        // The manifest-relative shard path resolves to the shard.
        let resolved = o.manifest.parent().unwrap().join(o.shard_entry_path(3));
        assert_eq!(std::fs::canonicalize(resolved.parent().unwrap()).ok(), None); // nothing on disk yet
        let norm: PathBuf = resolved.components().fold(PathBuf::new(), |mut acc, c| {
            if c == std::path::Component::ParentDir {
                acc.pop();
            } else {
                acc.push(c);
            }
            acc
        });
        assert_eq!(norm, o.shard_path(3));
    }

    #[test]
    fn shard_paths_must_stay_inside_the_output() {
        let m = Path::new("/o/indexes/M/D/manifest-train.json");
        assert_eq!(root_of_manifest(m), Path::new("/o"));
        assert_eq!(
            resolve_shard_path(m, "../../../embeddings/M/D/train/shard-00000.parquet").unwrap(),
            Path::new("/o/embeddings/M/D/train/shard-00000.parquet")
        );
        assert!(resolve_shard_path(m, "/etc/passwd").unwrap_err().contains("absolute"));
        assert!(resolve_shard_path(m, "../../../../etc/passwd").unwrap_err().contains("outside"));
        assert!(resolve_shard_path(m, "../../../indexes/M/D/manifest-train.json").unwrap_err().contains("outside"));
    }

    #[test]
    fn only_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        assert!(read_regular(&f, 4).unwrap_err().to_string().contains("more than the 4"));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(open_regular(&link).unwrap_err().to_string().contains("symbolic link"));
        assert!(open_regular(d.path()).unwrap_err().to_string().contains("not a regular file"));
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_regular(&fifo).unwrap_err().to_string().contains("not a regular file"), "a FIFO is refused without blocking");
    }

    #[test]
    fn a_link_in_place_of_a_temporary_is_removed_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        for (name, large) in [("m.json", false), ("s.parquet", true)] {
            let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
            std::os::unix::fs::symlink(&victim, &tmp).unwrap();
            let p = out.join(name);
            if large {
                write_atomic_large(&p, &aligned(b"new")).unwrap();
            } else {
                write_atomic(&p, b"new").unwrap();
            }
            assert_eq!(std::fs::read(&p).unwrap(), b"new");
            assert!(!std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
            assert_eq!(std::fs::read(&victim).unwrap(), b"keep me", "{name}: the link's target is untouched");
        }
    }

    #[test]
    fn folders_of_the_output_must_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(root.join("indexes/M")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        assert!(check_inside_root(&root, &root.join("indexes/M/D")).is_ok(), "judged by the nearest existing folder");
        std::os::unix::fs::symlink(&outside, root.join("embeddings")).unwrap();
        let e = check_inside_root(&root, &root.join("embeddings/M/D/train")).unwrap_err();
        assert!(e.contains("leads outside the output root"), "{e}");
        // A root that is itself a link is fine.
        let linked_root = d.path().join("linked-root");
        std::os::unix::fs::symlink(&root, &linked_root).unwrap();
        assert!(check_inside_root(&linked_root, &linked_root.join("indexes/M")).is_ok());
        // Files opened as inputs follow links, but only to regular files.
        std::fs::write(outside.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("f"), d.path().join("lf")).unwrap();
        assert_eq!(read_input(&d.path().join("lf"), 10).unwrap(), b"x");
        assert!(open_input(&outside).unwrap_err().to_string().contains("a folder"));
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        assert!(open_input(&d.path().join("zero")).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn dataset_names_from_paths() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("my data.jsonl");
        std::fs::write(&f, "").unwrap();
        assert_eq!(dataset_name(f.to_str().unwrap()), "my data");
        let sub = d.path().join("corpus");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(dataset_name(&format!("{}/*.parquet", sub.display())), "corpus");
    }
}
