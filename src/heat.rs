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
use crate::files::{self, Dir};
use crate::map::SharedPage;

pub(crate) const FILE_NAME: &str = "tokcache.heat";
/// The largest heat file, 1 MiB: 8 Mi bits. At a million entries of which a third are read,
/// 4% of cold keys find their bit set by another key.
const MAX_LEN: u64 = 1 << 20;
/// The smallest: 16 KiB, 128 Ki bits (an 8 MiB cache holds a few thousand entries).
const MIN_LEN: u64 = 16 << 10;

/// The length of a new heat file for a directory bounded to `bound` bytes: a 512th of it (a
/// bit per 64 bytes of bound, dozens per entry of a typical size) within [`MIN_LEN`,
/// [`MAX_LEN`]], a power of two, so that it takes little of a small bound (its blocks count in
/// the bound: it is allocated whole).
pub(crate) fn file_len(bound: Option<u64>) -> u64 {
    bound
        .map_or(MAX_LEN, |b| (b / 512).next_power_of_two())
        .clamp(MIN_LEN, MAX_LEN)
}

pub(crate) struct Heat {
    page: SharedPage,
    /// Bits in the file, a power of two.
    bits: usize,
}

impl Heat {
    /// Maps the directory's heat file, made (sparse, all bits clear) `len` bytes long if it
    /// is missing. Two processes making it at once both make an empty file; its length is
    /// then the first one's (a file of a later bound keeps the length it was made with).
    pub(crate) fn open(dir: &Dir, writable: bool, len: u64) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = if writable {
            files::open_or_make_whole(dir, FILE_NAME, len, &[])?
        } else {
            File::open(&path).ctx("open", &path)?
        };
        Self::map(&file, &path, writable)
    }

    fn map(file: &File, path: &Path, writable: bool) -> Result<Self> {
        let have = file.metadata().ctx("stat", path)?.len();
        // Whatever its length, the largest power of two in it (within the limits) is used.
        if have < MIN_LEN {
            return Err(crate::Error::io(
                "map",
                path,
                io::Error::new(io::ErrorKind::UnexpectedEof, "heat file too short"),
            ));
        }
        let used = (1u64 << have.ilog2()).min(MAX_LEN) as usize;
        let page = SharedPage::new(file, used, 0, writable).ctx("map", path)?;
        Ok(Self {
            page,
            bits: used * 8,
        })
    }

    fn bit(&self, hash: u64) -> (&AtomicU64, u64) {
        // The low bits of the key hash: the index's slot hash takes the high ones.
        let i = (hash as usize) & (self.bits - 1);
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

    /// Whether the key of `hash` was read since its bit was last cleared.
    pub(crate) fn is_hot(&self, hash: u64) -> bool {
        let (word, mask) = self.bit(hash);
        word.load(Ordering::Relaxed) & mask != 0
    }

    /// Clears the bit of `hash`: the key must be read again to be kept once more. (Eviction
    /// decides for all of a pass's entries first and clears after, so that a cold key whose
    /// hash shares a hot key's bit cannot clear it before the hot key is looked at.)
    pub(crate) fn cool(&self, hash: u64) {
        if self.page.is_writable() {
            let (word, mask) = self.bit(hash);
            word.fetch_and(!mask, Ordering::Relaxed);
        }
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
        let heat = Heat::open(&dir, true, file_len(Some(8 << 20))).unwrap();
        // A process of another bound uses the file as it was made.
        let other = Heat::open(&dir, true, file_len(None)).unwrap();
        assert!(!heat.is_hot(42));
        heat.touch(42);
        heat.touch(42);
        assert!(other.is_hot(42), "seen through another mapping");
        other.cool(42);
        assert!(!heat.is_hot(42), "cooled");
        // Hashes that differ only above the bits used share a bit.
        heat.touch(7);
        assert!(heat.is_hot(7 + (MIN_LEN * 8)));
        let meta = std::fs::metadata(dir.join(FILE_NAME)).unwrap();
        assert_eq!(meta.len(), MIN_LEN);
        assert_eq!(file_len(Some(1 << 30)), MAX_LEN);
        assert_eq!(file_len(Some(400 << 20)), 1 << 20);
        assert_eq!(file_len(Some(20 << 20)), 64 << 10);
        assert_eq!(file_len(Some(8 << 20)), MIN_LEN);
    }
}
