//! Index files `index-GGGGGGGGGGGGGGGG.tki`: a 64-byte header and an rkyv archive of an
//! open-addressing hash table from key hash to record location. Written once, renamed into
//! place, mapped by every process. `docs/format.md` is the specification.

use std::fs::File;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, IoContext, Result};
use crate::map::{ReadMap, access_validated};

pub(crate) const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"TOKCIDX1";
const VERSION: u32 = 1;
/// `seg` of an empty slot.
pub(crate) const EMPTY: u32 = u32::MAX;

pub(crate) fn index_name(generation: u64) -> String {
    format!("index-{generation:016x}.tki")
}

pub(crate) fn parse_index_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("index-")?.strip_suffix(".tki")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// One segment the index refers to: its id, the bytes of it that are valid, and how many of
/// those belong to live entries (the rest is dead and reclaimable).
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub id: u32,
    pub len: u64,
    pub live: u64,
}

/// A table slot: the key hash and where its record is. `ts` is the record's timestamp in whole
/// seconds, so compaction can drop expired entries without reading records.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub hash: u64,
    pub seg: u32,
    pub off: u32,
    pub len: u32,
    pub ts: u32,
}

impl Slot {
    pub(crate) const VACANT: Slot = Slot {
        hash: 0,
        seg: EMPTY,
        off: 0,
        len: 0,
        ts: 0,
    };
}

#[derive(Archive, Serialize, Debug)]
pub(crate) struct IndexBody {
    pub generation: u64,
    pub seed: u64,
    /// The segment appended to after this index was written.
    pub active_segment: u32,
    pub segments: Vec<SegmentInfo>,
    /// Linear probing from `(hash * len) >> 64`; at most 3/4 full.
    pub slots: Vec<Slot>,
    pub entries: u64,
}

/// The slot a hash probes first: `(hash * len) >> 64`, so any table length works.
#[inline]
fn home(hash: u64, len: usize) -> usize {
    ((u128::from(hash) * len as u128) >> 64) as usize
}

#[inline]
fn next(i: usize, len: usize) -> usize {
    if i + 1 == len { 0 } else { i + 1 }
}

impl IndexBody {
    /// Lays `entries` out in a table at most 3/4 full.
    pub(crate) fn build(
        generation: u64,
        seed: u64,
        active_segment: u32,
        segments: Vec<SegmentInfo>,
        entries: &[Slot],
    ) -> Self {
        let cap = (entries.len() * 4 / 3 + 1).max(16);
        let mut slots = vec![Slot::VACANT; cap];
        for e in entries {
            let mut i = home(e.hash, cap);
            while slots[i].seg != EMPTY {
                i = next(i, cap);
            }
            slots[i] = *e;
        }
        Self {
            generation,
            seed,
            active_segment,
            segments,
            slots,
            entries: entries.len() as u64,
        }
    }

    /// The whole file: header + archive.
    pub(crate) fn to_file_bytes(&self) -> Result<Vec<u8>> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| Error::InvalidValue(format!("cannot serialize index: {e}")))?;
        let mut out = Vec::with_capacity(HEADER_LEN + archive.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(archive.len() as u64).to_le_bytes());
        out.extend_from_slice(&xxh3_64(&archive).to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        let header_sum = xxh3_64(&out[..56]);
        out.extend_from_slice(&header_sum.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&archive);
        Ok(out)
    }
}

/// A mapped, validated index.
#[derive(Debug)]
pub(crate) struct Index {
    map: ReadMap,
    archive_len: usize,
    archive_sum: u64,
    pub path: PathBuf,
}

fn field(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl Index {
    /// Maps and checks the header and archive structure (bounds, not the checksum: that is
    /// O(size) and left to [`Index::verify_checksum`]; records check themselves on every read).
    pub(crate) fn open(path: &Path, expect_generation: u64, expect_seed: u64) -> Result<Self> {
        let file = File::open(path).ctx("open index", path)?;
        let len = file.metadata().ctx("stat index", path)?.len() as usize;
        if len < HEADER_LEN {
            return Err(Error::corrupt(path, "shorter than its header"));
        }
        let map = ReadMap::new(&file, len).ctx("map index", path)?;
        let b = map.bytes();
        if &b[..8] != MAGIC {
            return Err(Error::corrupt(path, "bad magic: not a tokcache index"));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(Error::corrupt(
                path,
                format!("format version {version}, this build reads {VERSION}"),
            ));
        }
        if xxh3_64(&b[..56]) != field(b, 56) {
            return Err(Error::corrupt(path, "header checksum mismatch"));
        }
        let (generation, archive_len, archive_sum, seed) = (
            field(b, 16),
            field(b, 24) as usize,
            field(b, 32),
            field(b, 40),
        );
        if generation != expect_generation || seed != expect_seed {
            return Err(Error::corrupt(
                path,
                "index belongs to another generation or cache",
            ));
        }
        if Some(len) != HEADER_LEN.checked_add(archive_len) {
            return Err(Error::corrupt(
                path,
                format!("archive length {archive_len} does not match file length {len}"),
            ));
        }
        let archive = &b[HEADER_LEN..];
        let body = rkyv::access::<ArchivedIndexBody, rkyv::rancor::Error>(archive)
            .map_err(|e| Error::corrupt(path, format!("invalid archive: {e}")))?;
        if body.slots.is_empty() || body.generation != generation || body.seed != seed {
            return Err(Error::corrupt(path, "archive disagrees with its header"));
        }
        Ok(Self {
            map,
            archive_len,
            archive_sum,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn body(&self) -> &ArchivedIndexBody {
        access_validated::<ArchivedIndexBody>(
            &self.map.bytes()[HEADER_LEN..HEADER_LEN + self.archive_len],
        )
    }

    pub(crate) fn verify_checksum(&self) -> bool {
        xxh3_64(&self.map.bytes()[HEADER_LEN..HEADER_LEN + self.archive_len]) == self.archive_sum
    }

    /// The occupied slots whose hash is `hash`, with their positions, in probe order.
    fn candidates(&self, hash: u64) -> impl Iterator<Item = (usize, &ArchivedSlot)> {
        let slots = &self.body().slots;
        let len = slots.len();
        let mut i = home(hash, len);
        (0..len)
            .map(move |_| {
                let at = i;
                i = next(i, len);
                (at, &slots[at])
            })
            .take_while(|(_, s)| s.seg != EMPTY)
            .filter(move |(_, s)| s.hash == hash)
    }

    /// Calls `f` with each occupied slot whose hash is `hash`, until `f` returns `Some`.
    #[inline]
    pub(crate) fn probe<R>(
        &self,
        hash: u64,
        mut f: impl FnMut(&ArchivedSlot) -> Option<R>,
    ) -> Option<R> {
        self.candidates(hash).find_map(|(_, s)| f(s))
    }

    /// The position of the slot `f` picks, for marking it superseded.
    pub(crate) fn position(
        &self,
        hash: u64,
        mut f: impl FnMut(&ArchivedSlot) -> bool,
    ) -> Option<usize> {
        self.candidates(hash).find(|(_, s)| f(s)).map(|(at, _)| at)
    }
}

impl ArchivedSlot {
    pub(crate) fn to_slot(&self) -> Slot {
        Slot {
            hash: self.hash.to_native(),
            seg: self.seg.to_native(),
            off: self.off.to_native(),
            len: self.len.to_native(),
            ts: self.ts.to_native(),
        }
    }
}
