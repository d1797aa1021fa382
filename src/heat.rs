//! Which entries were read since eviction last looked at them: one bit per key hash in a small
//! shared file, `tokcache.heat` (docs/format.md, "Eviction"). A hit sets its key's bit, if it is
//! not set already (so a hot key's page is dirtied once, not on every hit: a read never turns
//! into disk writes); eviction keeps the entries whose bit is set, and clears it, as CLOCK's
//! second chance does. Bits are shared by the keys whose hashes collide: a cold key may ride
//! on a hot one's bit (kept once more), never the other way round.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};
use crate::files::{Dir, file_options};
use crate::map::SharedPage;

pub(crate) const FILE_NAME: &str = "tokcache.heat";
/// 1 MiB: 8 Mi bits. At a million entries of which a third are read, 4% of cold keys find
/// their bit set by another key.
pub(crate) const FILE_LEN: usize = 1 << 20;
const WORDS: usize = FILE_LEN / 8;

pub(crate) struct Heat {
    page: SharedPage,
}

impl Heat {
    /// Maps the directory's heat file, made (sparse, all bits clear) if it is missing or
    /// short. Two processes making it at once both make the same empty file.
    pub(crate) fn open(dir: &Dir, writable: bool) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = if writable {
            file_options(dir.mode).create(true).open(&path)
        } else {
            File::open(&path)
        }
        .ctx("open", &path)?;
        Self::map(&file, &path, writable)
    }

    fn map(file: &File, path: &Path, writable: bool) -> Result<Self> {
        let len = file.metadata().ctx("stat", path)?.len();
        if len < FILE_LEN as u64 {
            if !writable {
                return Err(crate::Error::io(
                    "map",
                    path,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "heat file too short"),
                ));
            }
            file.set_len(FILE_LEN as u64).ctx("extend", path)?;
        }
        let page = SharedPage::new(file, FILE_LEN, 0, writable).ctx("map", path)?;
        Ok(Self { page })
    }

    fn bit(&self, hash: u64) -> (&AtomicU64, u64) {
        // The low bits of the key hash: the index's slot hash takes the high ones.
        let i = (hash as usize) & (WORDS * 64 - 1);
        (self.page.atomic((i / 64) * 8), 1 << (i % 64))
    }

    /// Notes a hit on the key of `hash`. Writes only if its bit is clear.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) {
        if !self.page.is_writable() {
            return;
        }
        let (word, mask) = self.bit(hash);
        if word.load(Ordering::Relaxed) & mask == 0 {
            word.fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// Whether the key of `hash` was read since its bit was last cleared; clears it.
    pub(crate) fn take(&self, hash: u64) -> bool {
        let (word, mask) = self.bit(hash);
        if word.load(Ordering::Relaxed) & mask == 0 {
            return false;
        }
        self.page.is_writable() && word.fetch_and(!mask, Ordering::Relaxed) & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touched_key_is_hot_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = Dir {
            path: t.path().to_path_buf(),
            mode: 0o600,
        };
        let heat = Heat::open(&dir, true).unwrap();
        let other = Heat::open(&dir, true).unwrap();
        assert!(!heat.take(42));
        heat.touch(42);
        heat.touch(42);
        assert!(other.take(42), "seen through another mapping");
        assert!(!heat.take(42), "taking clears it");
        // Hashes that differ only above the bits used share a bit.
        heat.touch(7);
        assert!(heat.take(7 + (WORDS as u64 * 64)));
        let meta = std::fs::metadata(dir.join(FILE_NAME)).unwrap();
        assert_eq!(meta.len(), FILE_LEN as u64);
    }
}
