//! Index files `index-GGGGGGGGGGGGGGGG.tki`: a 64-byte header and an rkyv archive of an
//! open-addressing hash table from key hash to record location. Written once, renamed into
//! place, mapped by every process. `docs/format.md` is the specification.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::filter::{self, Filter};
use crate::hash::{xxh3_64, xxh3_64_with_seed};
use crate::map::{ReadMap, access_validated};

pub(crate) const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"TOKCIDX1";
/// Version 2: the table is ordered by hash (version 1 wrapped around and was unordered).
/// Version 3: `log_start` (the log may continue from one generation to the next).
/// Version 4: `base` (an index may be a recent index over a full one).
/// Version 5: 12-byte slots (no record length: records say theirs); `record_bytes`.
/// Version 6: 8-byte slots (a 28-bit slot hash and a 36-bit location); `spans`.
/// Version 7: a Bloom filter of the slot hashes after the archive, and a footer. The archive
/// is version 6's: this build reads both.
const VERSION: u32 = 7;
/// The oldest version this build reads as it is (older ones are rebuilt from the segments).
const OLDEST_READ: u32 = 6;
/// The footer of a version 7 file: filter blocks, filter checksum, generation, and the
/// checksum of those 24 bytes.
const FOOTER_LEN: usize = 32;
/// `SegmentInfo::len` of a segment valid to its end (a log sealed by the compaction that
/// wrote the index, which trims it before publishing it).
pub(crate) const WHOLE_FILE: u64 = u64::MAX;
/// An empty slot.
const EMPTY: u64 = u64::MAX;
/// The segment of a slot whose location lies in no span: no segment has this id.
pub(crate) const NOWHERE: u32 = u32::MAX;
/// Bits of a slot that hold the record's location; the slot hash has the rest.
const LOC_BITS: u32 = 36;
const LOC_MASK: u64 = (1 << LOC_BITS) - 1;
/// Bits of the key hash a slot keeps.
const SLOT_HASH_BITS: u32 = 64 - LOC_BITS;
/// Locations count in units of the record alignment.
const UNIT: u64 = crate::record::ALIGN as u64;

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

/// One segment the index refers to: its id, the bytes of it that are valid, how many of those
/// belong to live entries, and how many are removals kept so that a rebuild from the segments
/// cannot bring the removed entries back (the rest is dead and reclaimable).
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub id: u32,
    pub len: u64,
    pub live: u64,
    pub tombstones: u64,
}

/// Where one segment's records lie in an index's *location* space: a slot's location is
/// `base + offset / 4` of the segment with the largest `base` not above it.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub seg: u32,
    pub base: u64,
}

/// A table entry as code sees it: the slot hash ([`slot_hash`]) and where the record is.
/// The record holds the whole hash and its own length; a lookup checks the hash, then the key
/// itself. In the file a slot is 8 bytes: `slot_hash << 36 | location` (see [`Span`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub hash: u32,
    pub seg: u32,
    pub off: u32,
}

/// The part of a key hash that a slot keeps: its top 28 bits.
#[inline]
pub(crate) fn slot_hash(hash: u64) -> u32 {
    (hash >> LOC_BITS) as u32
}

/// The smallest key hash of this slot hash.
pub(crate) fn lowest_hash(slot_hash: u32) -> u64 {
    u64::from(slot_hash) << LOC_BITS
}

#[derive(Archive, Serialize, Debug)]
pub(crate) struct IndexBody {
    pub generation: u64,
    pub seed: u64,
    /// Changes only when entries may have vanished or come back without records saying so (a
    /// clear, a rebuild): it is then the generation that did it; compaction copies it. A
    /// process moving to the next generation of the same epoch keeps its RAM tier.
    pub epoch: u64,
    /// The segment appended to after this index was written: the log.
    pub active_segment: u32,
    /// Where the log's records not in this index begin (the tail). Compaction usually keeps
    /// the log: the index then covers it up to here, and lists it among `segments` with this
    /// length too.
    pub log_start: u64,
    /// The generation of the full index under this one: `generation` itself for a full index.
    /// Otherwise this is a *recent* index, over the full index `base`: its slots are the
    /// newest records of the keys the log got from the base's `log_start` to this one's,
    /// removals included (they hide the base's entries), and `entries` counts the live
    /// entries of both together.
    pub base: u64,
    pub segments: Vec<SegmentInfo>,
    /// The segments the slots point into, in ascending `base` order.
    pub spans: Vec<Span>,
    /// Home slots: a slot hash `h`'s first probe is `(h * buckets) >> 28`. At most 3/4 of
    /// them are used, counting entries.
    pub buckets: u64,
    /// Ordered linear probing: entries in ascending hash order, each at its home slot or the
    /// first free slot after the previous entry. The table does not wrap around; overflow of
    /// the last buckets goes past `buckets`. So a probe stops at the first empty slot or the
    /// first larger hash: misses cost about as little as hits.
    pub slots: Vec<u64>,
    pub entries: u64,
    /// Bytes of the records the slots point at: the segments' live bytes for a full index;
    /// for a recent one, its records', removals included (for statistics: slots do not say).
    pub record_bytes: u64,
}

/// The slot a slot hash probes first: `(hash * buckets) >> 28`, so any table length works,
/// and the home slot grows with the hash (which keeps the table ordered).
#[inline]
fn home(hash: u32, buckets: u64) -> usize {
    ((u128::from(hash) * u128::from(buckets)) >> SLOT_HASH_BITS) as usize
}

/// The location space of these entries: one span per segment they point into, in id order,
/// each as long as its last record's offset needs. Errors past 2^36 units (256 GiB).
fn spans_of(entries: &[Slot]) -> Result<Vec<Span>> {
    let mut last: Vec<(u32, u64)> = Vec::new();
    for e in entries {
        match last.binary_search_by_key(&e.seg, |&(s, _)| s) {
            Ok(at) => last[at].1 = last[at].1.max(u64::from(e.off)),
            Err(at) => last.insert(at, (e.seg, u64::from(e.off))),
        }
    }
    let mut base = 0u64;
    let mut spans = Vec::with_capacity(last.len());
    for (seg, last_off) in last {
        spans.push(Span { seg, base });
        base += last_off / UNIT + 1;
    }
    if base > LOC_MASK {
        return Err(Error::InvalidValue(format!(
            "cannot index {} GiB of records in one index (the limit is {} GiB)",
            (base * UNIT) >> 30,
            ((LOC_MASK + 1) * UNIT) >> 30
        )));
    }
    Ok(spans)
}

impl IndexBody {
    /// Lays `entries` out in an ordered table at most 3/4 full.
    pub(crate) fn build(
        generation: u64,
        seed: u64,
        epoch: u64,
        active_segment: u32,
        log_start: u64,
        segments: Vec<SegmentInfo>,
        mut entries: Vec<Slot>,
    ) -> Result<Self> {
        let spans = spans_of(&entries)?;
        // Stable sort: compaction passes the old (ordered) table plus a short tail, runs that
        // the sort merges in about linear time.
        entries.sort_by_key(|e| e.hash);
        let buckets = (entries.len() as u64 * 4 / 3 + 1).max(16);
        let mut slots = vec![EMPTY; buckets as usize];
        let mut free = 0;
        let mut span = 0;
        for e in &entries {
            if spans[span].seg != e.seg {
                span = spans.partition_point(|s| s.seg < e.seg);
            }
            let loc = spans[span].base + u64::from(e.off) / UNIT;
            let packed = (u64::from(e.hash) << LOC_BITS) | loc;
            let i = home(e.hash, buckets).max(free);
            match slots.get_mut(i) {
                Some(s) => *s = packed,
                None => slots.push(packed),
            }
            free = i + 1;
        }
        Ok(Self {
            generation,
            seed,
            epoch,
            active_segment,
            log_start,
            base: generation,
            record_bytes: segments.iter().map(|s| s.live).sum(),
            segments,
            spans,
            buckets,
            slots,
            entries: entries.len() as u64,
        })
    }

    /// Makes this a recent index over the full index of generation `base`, the two together
    /// holding `entries` live entries; its records take `record_bytes`.
    pub(crate) fn over(mut self, base: u64, entries: u64, record_bytes: u64) -> Self {
        self.base = base;
        self.entries = entries;
        self.record_bytes = record_bytes;
        self
    }

    /// The whole file: header + archive. The archive is serialized in place after room for
    /// the header, into a buffer sized for it (a 1M-entry index is ~21 MB: no regrowth, no
    /// copy); rkyv's pointers are relative, so the archive is the same wherever it starts.
    pub(crate) fn to_file_bytes(&self) -> Result<rkyv::util::AlignedVec> {
        let filter = self.build_filter();
        let estimate = HEADER_LEN
            + self.slots.len() * std::mem::size_of::<u64>()
            + self.segments.len() * std::mem::size_of::<ArchivedSegmentInfo>()
            + self.spans.len() * std::mem::size_of::<ArchivedSpan>()
            + 256
            + filter::BLOCK
            + filter.len()
            + FOOTER_LEN;
        let mut buf = rkyv::util::AlignedVec::with_capacity(estimate);
        buf.extend_from_slice(&[0; HEADER_LEN]);
        let mut buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, buf)
            .map_err(|e| Error::InvalidValue(format!("cannot serialize index: {e}")))?;
        let archive = &buf[HEADER_LEN..];
        let body = rkyv::access::<ArchivedIndexBody, rkyv::rancor::Error>(archive)
            .map_err(|e| Error::InvalidValue(format!("cannot read back the index: {e}")))?;
        let meta_sum = meta_sum(archive, body);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header.extend_from_slice(&self.generation.to_le_bytes());
        header.extend_from_slice(&(archive.len() as u64).to_le_bytes());
        header.extend_from_slice(&xxh3_64(archive).to_le_bytes());
        header.extend_from_slice(&self.seed.to_le_bytes());
        header.extend_from_slice(&meta_sum.to_le_bytes());
        let header_sum = xxh3_64(&header);
        header.extend_from_slice(&header_sum.to_le_bytes());
        debug_assert_eq!(header.len(), HEADER_LEN);
        buf[..HEADER_LEN].copy_from_slice(&header);
        self.append_filter(&mut buf, &filter);
        Ok(buf)
    }

    /// The filter of the slot hashes for a full index (lookups that miss it stop there), none
    /// (0 blocks) for a recent one, whose misses must go on to the full index anyway. (A full
    /// index's `entries` are its occupied slots.)
    fn build_filter(&self) -> Vec<u8> {
        let blocks = if self.base == self.generation {
            filter::blocks_for(self.entries as usize)
        } else {
            0
        };
        let occupied = self.slots.iter().filter(|&&s| s != EMPTY);
        filter::build(occupied.map(|&s| (s >> LOC_BITS) as u32), blocks)
    }

    /// The filter section and the footer, after the archive.
    fn append_filter(&self, buf: &mut rkyv::util::AlignedVec, filter: &[u8]) {
        let padding = buf.len().next_multiple_of(filter::BLOCK) - buf.len();
        buf.extend_from_slice(&[0; filter::BLOCK][..padding]);
        buf.extend_from_slice(filter);
        let blocks = filter.len() / filter::BLOCK;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&(blocks as u64).to_le_bytes());
        footer.extend_from_slice(&xxh3_64(filter).to_le_bytes());
        footer.extend_from_slice(&self.generation.to_le_bytes());
        footer.extend_from_slice(&xxh3_64(&footer).to_le_bytes());
        buf.extend_from_slice(&footer);
    }
}

/// Where the filter of a version 7 file lies (`b` is the whole file) and its checksum, from
/// the footer, which must be intact and agree with the file's length and generation.
fn filter_section(
    b: &[u8],
    archive_end: usize,
    generation: u64,
) -> std::result::Result<(Range<usize>, u64), &'static str> {
    let at = b
        .len()
        .checked_sub(FOOTER_LEN)
        .filter(|&at| at >= archive_end)
        .ok_or("no room for the filter footer")?;
    let footer = &b[at..];
    if xxh3_64(&footer[..24]) != field(footer, 24) {
        return Err("filter footer checksum mismatch");
    }
    if field(footer, 16) != generation {
        return Err("filter footer of another generation");
    }
    let start = archive_end.next_multiple_of(filter::BLOCK);
    let len = usize::try_from(field(footer, 0))
        .ok()
        .and_then(|blocks| blocks.checked_mul(filter::BLOCK));
    if len.and_then(|len| start.checked_add(len)) != Some(at) {
        return Err("filter length does not match file length");
    }
    Ok((start..at, field(footer, 8)))
}

/// `xxh3_64` of the archive but its slots: the root and the segment and span lists, a few
/// hundred bytes that say how to read everything else (where the tail starts, which segment
/// is the log). Checked on every open, unlike the whole archive's sum (O(size)): a damaged
/// `log_start` would hide records appended after it, a damaged slot only its own entry.
fn meta_sum(archive: &[u8], body: &ArchivedIndexBody) -> u64 {
    let slots = body.slots.as_slice();
    let start = (slots.as_ptr() as usize).saturating_sub(archive.as_ptr() as usize);
    let end = start + std::mem::size_of_val(slots);
    let before = archive.get(..start).unwrap_or_default();
    let after = archive.get(end..).unwrap_or_default();
    xxh3_64_with_seed(after, xxh3_64(before))
}

/// [`Error::NewerFormat`] if the file at `path` is an index of a newer format (its magic, its
/// version above this build's, and an intact header: every version keeps bytes 0..12 and the
/// header checksum at 56..64 over 0..56, so that a damaged version field reads as damage).
pub(crate) fn check_not_newer(path: &Path) -> Result<()> {
    let mut b = [0u8; HEADER_LEN];
    let Ok(mut file) = File::open(path) else {
        return Ok(());
    };
    if std::io::Read::read_exact(&mut file, &mut b).is_err() {
        return Ok(());
    }
    match header_version(&b) {
        Ok(v) if v > VERSION => Err(Error::unknown_version(path, v, VERSION)),
        _ => Ok(()),
    }
}

/// The format version of an index header (at least `HEADER_LEN` bytes), once its magic and
/// checksum hold, which every version keeps.
fn header_version(b: &[u8]) -> std::result::Result<u32, &'static str> {
    if &b[..8] != MAGIC {
        return Err("bad magic: not a tokcache index");
    }
    if xxh3_64(&b[..56]) != field(b, 56) {
        return Err("header checksum mismatch");
    }
    Ok(u32::from_le_bytes([b[8], b[9], b[10], b[11]]))
}

/// A mapped, validated index.
#[derive(Debug)]
pub(crate) struct Index {
    map: ReadMap,
    archive_len: usize,
    archive_sum: u64,
    /// The filter's bytes in the map (empty: none), and their checksum.
    filter: Range<usize>,
    filter_sum: u64,
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
        let version = header_version(b).map_err(|why| Error::corrupt(path, why))?;
        if !(OLDEST_READ..=VERSION).contains(&version) {
            return Err(Error::unknown_version(path, version, VERSION));
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
        let archive_end = HEADER_LEN.saturating_add(archive_len);
        // Version 6 ends with the archive; 7 goes on with the filter and its footer.
        let (filter, filter_sum) = if version == OLDEST_READ {
            (archive_end..archive_end, xxh3_64(&[]))
        } else {
            filter_section(b, archive_end, generation).map_err(|why| Error::corrupt(path, why))?
        };
        if archive_end > len || (version == OLDEST_READ && archive_end != len) {
            return Err(Error::corrupt(
                path,
                format!("archive length {archive_len} does not match file length {len}"),
            ));
        }
        let archive = &b[HEADER_LEN..archive_end];
        let body = rkyv::access::<ArchivedIndexBody, rkyv::rancor::Error>(archive)
            .map_err(|e| Error::corrupt(path, format!("invalid archive: {e}")))?;
        if body.slots.is_empty() || body.generation != generation || body.seed != seed {
            return Err(Error::corrupt(path, "archive disagrees with its header"));
        }
        if meta_sum(archive, body) != field(b, 48) {
            return Err(Error::corrupt(
                path,
                "checksum of the index's root and lists mismatch",
            ));
        }
        if !body.spans.is_sorted_by_key(|s| s.base.to_native()) {
            return Err(Error::corrupt(path, "location spans out of order"));
        }
        Ok(Self {
            map,
            archive_len,
            archive_sum,
            filter,
            filter_sum,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn body(&self) -> &ArchivedIndexBody {
        access_validated::<ArchivedIndexBody>(
            &self.map.bytes()[HEADER_LEN..HEADER_LEN + self.archive_len],
        )
    }

    /// Whether the archive matches its checksum (O(size)): what a merge reads of the index.
    pub(crate) fn verify_checksum(&self) -> bool {
        xxh3_64(&self.map.bytes()[HEADER_LEN..HEADER_LEN + self.archive_len]) == self.archive_sum
    }

    /// Whether the filter matches its checksum. A damaged filter costs misses of keys the
    /// index holds, never a wrong value (only a full index, under which nothing lies, has
    /// one), and the next full merge, which builds its filter from the slots, replaces it:
    /// unlike a damaged archive, it needs no rebuild from the segments.
    pub(crate) fn filter_intact(&self) -> bool {
        xxh3_64(&self.map.bytes()[self.filter.clone()]) == self.filter_sum
    }

    fn filter(&self) -> Filter<'_> {
        Filter(&self.map.bytes()[self.filter.clone()])
    }

    /// `false` only if no slot of this index carries the slot hash of `hash`: a lookup of a
    /// key the index does not hold then reads no slot. (An index without a filter: `true`.)
    #[inline]
    pub(crate) fn may_hold(&self, hash: u64) -> bool {
        self.filter().may_hold(slot_hash(hash))
    }

    /// Whether this index has a filter (a full index of format 7 with entries).
    #[cfg(test)]
    fn has_filter(&self) -> bool {
        !self.filter.is_empty()
    }

    /// Starts reading the filter block [`Index::may_hold`] reads for `hash`.
    #[inline]
    pub(crate) fn touch_filter(&self, hash: u64) {
        self.filter().touch(slot_hash(hash));
    }

    /// Starts reading the slot a probe for `hash` reads first, so that it arrives while the
    /// caller looks elsewhere (a prefetch: the CPU does not wait for it).
    #[inline]
    pub(crate) fn touch(&self, hash: u64) {
        let body = self.body();
        if let Some(s) = body
            .slots
            .get(home(slot_hash(hash), body.buckets.to_native()))
        {
            crate::sys::prefetch(s);
        }
    }

    /// The slot at position `at` of the table, if it is occupied (and its location is in a
    /// span).
    #[inline]
    pub(crate) fn slot(&self, at: usize) -> Option<Slot> {
        self.decode(self.body().slots.get(at)?.to_native())
    }

    /// The occupied slots, in table order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let body = self.body();
        body.slots.iter().filter_map(|s| self.decode(s.to_native()))
    }

    /// Positions in the table (for [`Index::slot`] and marking superseded entries).
    pub(crate) fn len(&self) -> usize {
        self.body().slots.len()
    }

    /// The slot of these 8 bytes; `None` if empty. A location in no span, or past 4 GiB of
    /// its segment (a damaged index) gives segment [`NOWHERE`], whose records read as damaged.
    #[inline]
    fn decode(&self, packed: u64) -> Option<Slot> {
        if packed == EMPTY {
            return None;
        }
        let loc = packed & LOC_MASK;
        let spans = &self.body().spans;
        let at = spans.partition_point(|s| s.base <= loc);
        let (seg, off) = at
            .checked_sub(1)
            .and_then(|at| {
                let span = &spans[at];
                let off = u32::try_from((loc - span.base.to_native()) * UNIT).ok()?;
                Some((span.seg.to_native(), off))
            })
            .unwrap_or((NOWHERE, 0));
        Some(Slot {
            hash: (packed >> LOC_BITS) as u32,
            seg,
            off,
        })
    }

    /// Calls `f` with the position of each occupied slot whose slot hash is that of `hash`,
    /// and the slot, in probe order, until `f` returns `Some` (callers check the record's whole
    /// hash and key). A plain loop: it is on the path of every lookup.
    #[inline]
    fn scan<R>(&self, hash: u64, mut f: impl FnMut(usize, Slot) -> Option<R>) -> Option<R> {
        let body = self.body();
        let hash = slot_hash(hash);
        let start = home(hash, body.buckets.to_native());
        for (at, s) in (start..).zip(body.slots.get(start..)?) {
            let s = s.to_native();
            let h = (s >> LOC_BITS) as u32;
            if s == EMPTY || h > hash {
                return None;
            }
            if h == hash
                && let Some(r) = self.decode(s).and_then(|s| f(at, s))
            {
                return Some(r);
            }
        }
        None
    }

    /// Calls `f` with each occupied slot whose hash is `hash`, until `f` returns `Some`.
    #[inline]
    pub(crate) fn probe<R>(&self, hash: u64, mut f: impl FnMut(Slot) -> Option<R>) -> Option<R> {
        self.scan(hash, |_, s| f(s))
    }

    /// The positions of every occupied slot with the slot hash of `hash`.
    pub(crate) fn positions(&self, hash: u64) -> Vec<usize> {
        let mut all = Vec::new();
        self.scan(hash, |at, _| {
            all.push(at);
            None::<()>
        });
        all
    }

    /// The position of the slot `f` picks, for marking it superseded.
    pub(crate) fn position(&self, hash: u64, mut f: impl FnMut(Slot) -> bool) -> Option<usize> {
        self.scan(hash, |at, s| f(s).then_some(at))
    }
}

#[cfg(test)]
mod tests;
