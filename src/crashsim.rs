//! What each sync made durable, recorded for the machine-crash test (`tests/machine_crash.rs`).
//! Built only with the feature `killpoints`, and active only where `TOKCACHE_CRASH_SHADOW`
//! names a directory: there, just before every `fsync` of a file, its whole content is copied
//! to `ino-INODE`, and just before every `fsync` of the cache directory, its listing (inode and
//! name per line) is written to `names`. A copy taken before the sync holds no byte the sync
//! does not make durable; the test builds "crashed" directories from these copies (what is
//! durable) and the files as they are (what the page cache may also have written back).
//!
//! Copies are taken under an `flock` of the shadow directory's `lock` file, so that of two
//! processes syncing one file the older copy never replaces the newer.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

fn shadow() -> Option<PathBuf> {
    std::env::var_os("TOKCACHE_CRASH_SHADOW").map(PathBuf::from)
}

/// Replaces `shadow/name` by `bytes`, atomically.
fn put(shadow: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = shadow.join(format!("tmp-{}", std::process::id()));
    File::create(&tmp)?.write_all(bytes)?;
    std::fs::rename(&tmp, shadow.join(name))
}

fn record(what: impl FnOnce(&Path) -> std::io::Result<()>) {
    let Some(dir) = shadow() else {
        return;
    };
    let done = File::create(dir.join("lock"))
        .and_then(|lock| crate::lock::hold_exclusive(&lock).map(|()| lock))
        .and_then(|_lock| what(&dir));
    if let Err(e) = done {
        // The test would blame the cache for what the record lacks: stop here instead.
        panic!("crash shadow in {}: {e}", dir.display());
    }
}

/// Called before `file` is fsynced.
pub(crate) fn file_synced(file: &File) {
    record(|dir| {
        let meta = file.metadata()?;
        let mut bytes = vec![0; usize::try_from(meta.len()).unwrap_or(usize::MAX)];
        let n = read_all_at(file, &mut bytes)?;
        bytes.truncate(n);
        put(dir, &format!("ino-{}", meta.ino()), &bytes)
    });
}

/// Called before the directory `path` is fsynced.
pub(crate) fn dir_synced(path: &Path) {
    record(|dir| {
        let mut listing = String::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            let ino = e.metadata()?.ino();
            listing.push_str(&format!("{ino} {}\n", e.file_name().to_string_lossy()));
        }
        put(dir, "names", listing.as_bytes())
    });
}

/// Reads from offset 0 until `buf` is full or the file ends; returns the bytes read.
fn read_all_at(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match file.read_at(&mut buf[at..], at as u64)? {
            0 => break,
            n => at += n,
        }
    }
    Ok(at)
}
