//! Segment files `seg-NNNNNNNNNN.tks`: append-only runs of records. The active one (the log) is
//! appended to under the write lock; the others are immutable. None is ever truncated below its
//! published length (compaction trims only the space reserved ahead of the log).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::files::{Dir, file_options};
use crate::map::{self, ReadMap};
use crate::record::{self, PrefixNames, RecordRef};
use crate::sys;

pub(crate) fn segment_name(id: u32) -> String {
    format!("seg-{id:010}.tks")
}

/// Parses a segment file name back into its id.
pub(crate) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".tks")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Dir {
    /// Opens (creating if needed) a segment for appending. Never follows a symlink.
    pub(crate) fn open_log(&self, id: u32) -> Result<(File, PathBuf)> {
        let path = self.join(&segment_name(id));
        let file = file_options(self.mode)
            .create(true)
            .open(&path)
            .ctx("open segment", &path)?;
        Ok((file, path))
    }

    /// Creates the log of a new generation, empty: a file left under its name by a compaction
    /// that died before publishing it is named by no generation, and is replaced.
    pub(crate) fn create_log(&self, id: u32) -> Result<(File, PathBuf)> {
        let path = self.join(&segment_name(id));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io("remove stale segment", &path, e)),
        }
        self.open_log(id)
    }
}

/// Logs at least this long end on a 2 MiB boundary, as they grow and after the compactions
/// their growth sets off ([`huge_aligned`]): the page cache then fills them in whole 2 MiB
/// folios, which readers map with one page table entry each (see `map::prefer_huge_pages`;
/// trimming a log inside a folio would split it). The slack, under 2 MiB, is at most 1/16 of
/// such a log; smaller logs keep exact lengths, and `compact()` trims exactly.
const HUGE_ALIGN_FROM: u64 = 32 << 20;

/// `len`, rounded up to a multiple of 2 MiB if it is a large log's (see [`HUGE_ALIGN_FROM`]).
pub(crate) fn huge_aligned(len: u64) -> u64 {
    if len >= HUGE_ALIGN_FROM {
        len.next_multiple_of(map::HUGE_PAGE)
    } else {
        len
    }
}

/// Grows the log so that `need` bytes fit, in steps of 1/8 of its length past `start` (the
/// tail: 64 KiB to 8 MiB) so that readers remap rarely, and returns the new length. (Steps
/// follow the tail, not the file: a log that goes on for many generations would otherwise keep
/// megabytes reserved that a small cache never fills.) A large log's end stays 2 MiB-aligned
/// ([`huge_aligned`]). The new space is allocated where
/// the file system can (so a full disk shows here, as an error, and writes through a mapping
/// into it cannot fail); elsewhere it is sparse. `current` may be stale: another process may have
/// grown the file, and it is never shrunk.
pub(crate) fn reserve(
    file: &File,
    path: &Path,
    start: u64,
    current: u64,
    need: u64,
) -> Result<u64> {
    if need <= current {
        return Ok(current);
    }
    let current = current.max(file.metadata().ctx("stat segment", path)?.len());
    if need <= current {
        return Ok(current);
    }
    const KIB: u64 = 1024;
    let step = (current.saturating_sub(start) / 8).clamp(64 * KIB, 8192 * KIB);
    let len = huge_aligned(need.max(current + step).next_multiple_of(64 * KIB));
    match sys::allocate(file, current, len - current) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
            file.set_len(len).ctx("grow segment", path)?;
        }
        Err(e) => return Err(crate::Error::io("grow segment", path, e)),
    }
    Ok(len)
}

/// Maps the first `len` bytes of a segment, or fewer if the file is shorter (damaged).
pub(crate) fn map_segment(file: &File, path: &Path, len: u64) -> Result<ReadMap> {
    let on_disk = file.metadata().ctx("stat segment", path)?.len();
    let len = len.min(on_disk);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    ReadMap::new(file, len).ctx("map segment", path)
}

/// Walks the records of `buf` from `start`, stopping at the end or at the first bad record.
/// Returns the offset where it stopped and why, if it stopped early.
pub(crate) fn scan<'a, P: PrefixNames + ?Sized>(
    buf: &'a [u8],
    start: usize,
    prefixes: &'a P,
    mut visit: impl FnMut(usize, &RecordRef<'a>),
) -> (usize, Option<&'static str>) {
    let mut off = start;
    while off < buf.len() {
        match record::decode(buf, off, prefixes) {
            Ok(rec) => {
                visit(off, &rec);
                off += rec.len;
            }
            Err(why) => return (off, Some(why)),
        }
    }
    (off, None)
}

/// Lists the segment ids present in `dir`, sorted.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).ctx("list directory", dir)? {
        let entry = entry.ctx("list directory", dir)?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_logs_grow_to_whole_2_mib_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        let file = File::create_new(&path).unwrap();
        // A small log grows in 64 KiB multiples, a large one to 2 MiB boundaries.
        let small = reserve(&file, &path, 0, 0, 100_000).unwrap();
        assert_eq!(small, 128 << 10);
        let mut len = small;
        let mut aligned_from = None;
        while len < 64 << 20 {
            len = reserve(&file, &path, 0, len, len + 300_000).unwrap();
            assert_eq!(file.metadata().unwrap().len(), len);
            if len >= HUGE_ALIGN_FROM {
                assert_eq!(len % map::HUGE_PAGE, 0, "{len}");
                aligned_from.get_or_insert(len);
            } else {
                assert_eq!(len % (64 << 10), 0, "{len}");
            }
        }
        assert!(aligned_from.is_some());
        assert_eq!(huge_aligned(HUGE_ALIGN_FROM - 1), HUGE_ALIGN_FROM - 1);
        assert_eq!(
            huge_aligned(HUGE_ALIGN_FROM + 1),
            HUGE_ALIGN_FROM + map::HUGE_PAGE
        );
    }
}
