//! What one process has mapped of a generation, and the tail table of the records appended
//! since its index was written.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::error::Result;
use crate::index::{self, Index, SegmentInfo};
use crate::keys::KeyBytes;
use crate::map::ReadMap;
use crate::prefixes::Prefixes;
use crate::record::{self, Kind, RecordRef};
use crate::segment;

use super::logfile::Log;
use super::tail::{Tail, TailLoc};

/// How a lookup is made. `Alone`: one key at a time, which asks the full index's filter before
/// its slots, so that a miss reads a block of the filter (1 byte per entry, likelier to be
/// cached) instead of a slot (11 bytes per entry). `Batched`: keys whose slots and records
/// [`View::prefetch`] began reading together; their reads overlap, and the filter's would be
/// one more each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Alone,
    Batched,
}

/// The CPU's cache line, the unit of a prefetch.
const LINE: usize = 64;

/// What a process has mapped of one generation, plus the tail it has scanned.
pub(super) struct View {
    /// Names the prefixes of records that hold a prefix's number.
    pub(super) prefixes: Arc<Prefixes>,
    pub(super) generation: u64,
    /// The full index. `None` only before the first load.
    pub(super) index: Option<Arc<Index>>,
    /// The recent index over it, when the generation has one (see `IndexBody::base`): the
    /// log's records from the full index's `log_start` to `log_start`.
    pub(super) recent: Option<Arc<Index>>,
    pub(super) segments: SegmentMaps,
    pub(super) infos: Vec<SegmentInfo>,
    pub(super) active: u32,
    /// The active segment's file and mappings.
    pub(super) log: Log,
    /// Where the tail begins in the log (the indexes cover the log up to here).
    pub(super) log_start: u64,
    /// Where the tail ends: records up to here are in the tail table.
    pub(super) scanned: u64,
    pub(super) seen_committed: u64,
    pub(super) tail: Tail,
    pub(super) tail_records: u64,
    /// Entries the tail adds to (or removes from) the index's count, once computed.
    delta: OnceLock<i64>,
    /// The recent index's records and their bytes, once counted.
    recent_size: OnceLock<(u64, u64)>,
}

/// The maps of a generation's immutable segments, by id: a few, so a sorted list (a lookup
/// in it is on the path of every index hit; a `HashMap` would hash the id with SipHash).
#[derive(Clone, Default)]
pub(super) struct SegmentMaps(Vec<(u32, Arc<ReadMap>)>);

impl SegmentMaps {
    pub(super) fn insert(&mut self, id: u32, map: Arc<ReadMap>) {
        match self.0.binary_search_by_key(&id, |(i, _)| *i) {
            Ok(at) => self.0[at].1 = map,
            Err(at) => self.0.insert(at, (id, map)),
        }
    }

    pub(super) fn get(&self, id: u32) -> Option<&Arc<ReadMap>> {
        let at = self.0.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(&self.0[at].1)
    }
}

/// Whether `rec` is a record of this prefix and key. Callers have matched the record's whole
/// key hash, which covers the prefix: a record whose prefix number the table lacks (empty
/// prefix) is taken for one of the asked prefix, so that it supersedes and is superseded as
/// it should, and a lookup that finds it as the newest is a miss, never an older value.
pub(super) fn key_eq<K: KeyBytes + ?Sized>(rec: &RecordRef<'_>, prefix: &[u8], key: &K) -> bool {
    key.eq_bytes(rec.key) && (rec.prefix == prefix || rec.prefix.is_empty())
}

/// A record found for a lookup, unless its prefix is unknown (see [`key_eq`]).
fn known<'a>(
    found: (&'a Arc<ReadMap>, RecordRef<'a>),
) -> Option<(&'a Arc<ReadMap>, RecordRef<'a>)> {
    (!found.1.prefix.is_empty()).then_some(found)
}

impl View {
    /// A view of these maps whose log is not opened or scanned yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        prefixes: Arc<Prefixes>,
        generation: u64,
        index: Option<Arc<Index>>,
        recent: Option<Arc<Index>>,
        segments: SegmentMaps,
        infos: Vec<SegmentInfo>,
        active: u32,
        log_start: u64,
        log_path: PathBuf,
    ) -> Self {
        Self {
            prefixes,
            generation,
            index,
            recent,
            segments,
            infos,
            active,
            log: Log::new(log_path),
            log_start,
            scanned: log_start,
            seen_committed: 0,
            tail: Tail::default(),
            tail_records: 0,
            delta: OnceLock::new(),
            recent_size: OnceLock::new(),
        }
    }

    /// What compaction reads while other writers go on: the same maps, and a handle of the log
    /// (to make it durable), without the writable mapping; its tail table is left empty, for
    /// the caller to fill with `scan_log` up to this view's `scanned` once it has let go of the
    /// write lock (copying a large table would hold the lock for milliseconds).
    pub(super) fn snapshot(&self) -> Result<Self> {
        Ok(Self {
            prefixes: Arc::clone(&self.prefixes),
            generation: self.generation,
            index: self.index.clone(),
            recent: self.recent.clone(),
            segments: self.segments.clone(),
            infos: self.infos.clone(),
            active: self.active,
            log: self.log.snapshot()?,
            log_start: self.log_start,
            scanned: self.log_start,
            seen_committed: self.seen_committed,
            tail: Tail::default(),
            tail_records: 0,
            delta: OnceLock::new(),
            recent_size: OnceLock::new(),
        })
    }

    pub(super) fn map_of(&self, seg: u32) -> Option<&Arc<ReadMap>> {
        if seg == self.active {
            Some(self.log.map())
        } else {
            self.segments.get(seg)
        }
    }

    /// The map through which a lookup reads the record at `off` of segment `seg`.
    fn map_at(&self, seg: u32, off: u32) -> Option<&Arc<ReadMap>> {
        if seg != self.active {
            self.segments.get(seg)
        } else if u64::from(off) < self.log_start {
            Some(self.log.head())
        } else {
            Some(self.log.map())
        }
    }

    /// The record at `off` of segment `seg`, if it passes its checks. Its prefix is empty if
    /// the prefix table lacks its number: such a record is never served (see `find`).
    pub(super) fn record(&self, seg: u32, off: u32) -> Option<(&Arc<ReadMap>, RecordRef<'_>)> {
        let map = self.map_at(seg, off)?;
        let rec = record::decode(map.bytes(), off as usize, &self.prefixes).ok()?;
        Some((map, rec))
    }

    /// Starts the reads that lookups of these hashes make, all at once, so that they overlap
    /// (in a large cache, each is a miss of the CPU cache): first the slots the indexes' probes
    /// start at, then, from those slots and the tail table, the first lines of the record each
    /// lookup will check first (the tail table knows its length, and its last line is read
    /// too; a slot does not: the line after the first stands in for it). Only hints: `find`
    /// checks everything as always.
    pub(super) fn prefetch(&self, hashes: &[u64]) {
        for &hash in hashes {
            for index in self.recent.iter().chain(&self.index) {
                index.touch(hash);
            }
        }
        for &hash in hashes {
            // (segment, offset, offset of the record's last line or of the next one)
            let in_tail = self.tail.candidates(hash).next();
            let first = in_tail
                .map(|l| {
                    let last = (l.off as usize + l.len() as usize).saturating_sub(1);
                    (self.active, l.off, last)
                })
                .or_else(|| {
                    let mut indexes = self.recent.iter().chain(&self.index);
                    indexes.find_map(|i| {
                        i.probe(hash, |s| Some((s.seg, s.off, s.off as usize + LINE)))
                    })
                });
            let Some((seg, off, last)) = first else {
                continue;
            };
            if let Some(map) = self.map_at(seg, off) {
                for b in [off as usize, last]
                    .into_iter()
                    .filter_map(|at| map.bytes().get(at))
                {
                    crate::sys::prefetch(b);
                }
            }
        }
    }

    /// The newest record of this key: from the tail, else the recent index, else the full
    /// index. Removals included.
    pub(super) fn find<K: KeyBytes + ?Sized>(
        &self,
        hash: u64,
        prefix: &[u8],
        key: &K,
        lookup: Lookup,
    ) -> Option<(&Arc<ReadMap>, RecordRef<'_>)> {
        // The slots of both indexes (and the full index's filter block) are read while the
        // tail table is probed: three lookups, about the time of one.
        for index in self.recent.iter().chain(&self.index) {
            index.touch(hash);
        }
        let filtered = lookup == Lookup::Alone;
        if filtered && let Some(index) = &self.index {
            index.touch_filter(hash);
        }
        for l in self.tail.candidates(hash) {
            // A damaged record is a miss (see `find_indexed`).
            let (map, rec) = self.record(self.active, l.off)?;
            if key_eq(&rec, prefix, key) {
                return known((map, rec));
            }
        }
        self.find_indexed(hash, prefix, key, filtered)
    }

    /// The newest record of this key that the indexes know (removals included): the recent
    /// index's, else the full index's. `filtered`: a key the full index's filter does not
    /// hold is not looked for in its slots.
    fn find_indexed<K: KeyBytes + ?Sized>(
        &self,
        hash: u64,
        prefix: &[u8],
        key: &K,
        filtered: bool,
    ) -> Option<(&Arc<ReadMap>, RecordRef<'_>)> {
        if let Some(found) = self
            .recent
            .as_ref()
            .and_then(|r| self.probe_index(r, hash, prefix, key))
        {
            return found;
        }
        let full = self.index.as_ref()?;
        if filtered && !full.may_hold(hash) {
            return None;
        }
        self.probe_index(full, hash, prefix, key)?
    }

    /// The record of this key that `index` points at, if any. `Some(None)`: a slot with the
    /// key's hash points at a record that fails its checks (a damaged file), which makes the
    /// key a miss: that record may be its newest, and an older one must not show through.
    fn probe_index<K: KeyBytes + ?Sized>(
        &self,
        index: &Index,
        hash: u64,
        prefix: &[u8],
        key: &K,
    ) -> Option<Option<(&Arc<ReadMap>, RecordRef<'_>)>> {
        index.probe(hash, |s| match self.record(s.seg, s.off) {
            Some((map, rec)) => {
                (rec.key_hash == hash && key_eq(&rec, prefix, key)).then(|| known((map, rec)))
            }
            None => Some(None),
        })
    }

    /// Whether the indexes hold a live entry of this key.
    pub(super) fn in_index(&self, hash: u64, prefix: &[u8], key: &[u8]) -> bool {
        self.find_indexed(hash, prefix, key, true)
            .is_some_and(|(_, rec)| rec.kind != Kind::Tombstone)
    }

    /// Whether the log holds a record of this key newer than the full index's: in the tail,
    /// or (unless `tail_only`) in the recent index.
    pub(super) fn in_log(&self, hash: u64, prefix: &[u8], key: &[u8], tail_only: bool) -> bool {
        let in_tail = self.tail.candidates(hash).any(|l| {
            self.record(self.active, l.off)
                .is_some_and(|(_, r)| key_eq(&r, prefix, key))
        });
        in_tail
            || (!tail_only
                && self
                    .recent
                    .as_ref()
                    .is_some_and(|r| self.probe_index(r, hash, prefix, key).is_some()))
    }

    /// The newest record of each key the log got since the full index was written: the
    /// tail's, and the recent index's that the tail does not supersede. Removals included.
    pub(super) fn log_entries(&self) -> Vec<(u64, TailLoc)> {
        let mut all: Vec<(u64, TailLoc)> = self.tail.iter().map(|(h, l)| (h, *l)).collect();
        let Some(recent) = &self.recent else {
            return all;
        };
        for s in recent.slots() {
            let Some((_, rec)) = self.record(s.seg, s.off) else {
                // Damaged: kept (its length unknown), so that it goes on hiding older records
                // of its slot hash.
                all.push((index::lowest_hash(s.hash), TailLoc::new(s.off, 0, false)));
                continue;
            };
            if !self.in_log(rec.key_hash, rec.prefix, rec.key, true) {
                let loc = TailLoc::new(s.off, rec.len as u32, rec.kind == Kind::Tombstone);
                all.push((rec.key_hash, loc));
            }
        }
        all
    }

    /// The generations of the indexes mapped: the full one's, and the recent one's.
    pub(super) fn index_generations(&self) -> Vec<u64> {
        let mut all = vec![self.generation];
        all.extend(self.index.as_ref().map(|i| i.body().generation.to_native()));
        all
    }

    /// The recent index's records and their bytes (removals included: its slots do not say),
    /// counted once per view: what `stats` reports without reading records.
    pub(super) fn recent_size(&self) -> (u64, u64) {
        *self.recent_size.get_or_init(|| {
            self.recent.as_ref().map_or((0, 0), |r| {
                (r.slots().count() as u64, r.body().record_bytes.to_native())
            })
        })
    }

    /// The full index's entry count, or the recent index's (which counts both).
    pub(super) fn indexed_entries(&self) -> u64 {
        self.recent
            .as_ref()
            .or(self.index.as_ref())
            .map_or(0, |i| i.body().entries.to_native())
    }

    /// The index's epoch (see `IndexBody::epoch`).
    pub(super) fn epoch(&self) -> Option<u64> {
        self.index.as_ref().map(|i| i.body().epoch.to_native())
    }

    /// Whether this (new, unscanned) view's log goes on from `prev`'s: a later generation of
    /// the same epoch with the same log (the file itself: a log's id is never reused within an
    /// epoch), which `prev` has scanned at least up to where this one's tail begins.
    fn continues(&self, prev: &View) -> bool {
        prev.index.is_some()
            && prev.log.is_open()
            && prev.generation < self.generation
            && prev.epoch() == self.epoch()
            && prev.active == self.active
            && (prev.log_start..=prev.scanned).contains(&self.log_start)
    }

    /// If this (new, unscanned) view's log goes on from `prev`'s ([`View::continues`]), takes
    /// over the part of `prev`'s tail table at or past this view's `log_start`: that is this
    /// generation's tail, as far as `prev` scanned. The records are counted again (their
    /// headers are read), but the table is not rebuilt. `false`: nothing carried.
    pub(super) fn carry_tail(&mut self, prev: &View) -> bool {
        if !self.continues(prev) {
            return false;
        }
        self.tail = prev
            .tail
            .since(u32::try_from(self.log_start).unwrap_or(u32::MAX));
        let end = usize::try_from(prev.scanned).unwrap_or(usize::MAX);
        let log = prev.log.map().bytes();
        // `prev` checked these records when it scanned them: only their lengths are read.
        self.tail_records = record::count_checked(log, self.log_start as usize, end.min(log.len()));
        self.scanned = prev.scanned;
        true
    }

    /// Sizes the (empty) tail table for the records of a log published up to `committed`, so
    /// that the first scan does not grow it step by step: one per 96 bytes (small records),
    /// but never more than `most`, the records a tail holds before compaction indexes them.
    /// (Sized by bytes alone, a log of 8 KB records reserved a table for 85 times the records
    /// it held, and the scan's inserts, spread over it by hash, touched nearly all its pages:
    /// 7.8 MB of private memory for 5,000 records.)
    pub(super) fn presize_tail(&mut self, committed: u64, most: u64) {
        let bytes = committed
            .min(self.log.file_len())
            .saturating_sub(self.log_start);
        let expected = (bytes / 96).min(most).min(1 << 24);
        self.tail = Tail::with_capacity(expected as usize);
    }

    /// Calls `changed` with the key hash of every record of the log past what was scanned, up
    /// to `end` (records others appended before the compaction that sealed it, or, if the log
    /// goes on, those the next view has scanned). `false` if the log cannot be read.
    ///
    /// Never past `end`: a log that goes on may be trimmed meanwhile by a compaction that
    /// does not wait for this process, down to its committed length, and reading a page
    /// past the end of a file through a mapping kills the process (`SIGBUS`).
    pub(super) fn scan_rest(&self, end: u64, mut changed: impl FnMut(u64)) -> bool {
        let Some(map) = self.log.map_up_to(end) else {
            return false;
        };
        let start = usize::try_from(self.scanned).unwrap_or(usize::MAX);
        if start < map.bytes().len() {
            segment::scan(map.bytes(), start, &self.prefixes, |_, rec| {
                changed(rec.key_hash);
            });
        }
        true
    }

    /// Whether the log holds published records past its intact part (lost in a machine
    /// crash): the scan stopped short of the committed length.
    pub(super) fn damaged_tail(&self) -> bool {
        self.scanned < self.seen_committed
    }

    /// Maps the log up to `committed` and adds its new records to the tail table. Calls
    /// `changed` with the hash of each key that changed.
    pub(super) fn scan_log(&mut self, committed: u64, mut changed: impl FnMut(u64)) -> Result<()> {
        self.seen_committed = committed;
        // Only published records are borrowed: past them, this process's writer may be
        // writing through its own mapping.
        let visible = committed.max(self.scanned);
        self.log.show(visible)?;
        if committed <= self.scanned {
            return Ok(());
        }
        let map = Arc::clone(self.log.map());
        let end = usize::try_from(committed)
            .unwrap_or(usize::MAX)
            .min(map.bytes().len());
        let log = map.bytes();
        let tail = &mut self.tail;
        let prefixes = &*self.prefixes;
        let mut added = 0;
        let (stop, why) =
            segment::scan(&log[..end], self.scanned as usize, prefixes, |off, rec| {
                let loc = TailLoc::new(off as u32, rec.len as u32, rec.kind == Kind::Tombstone);
                tail.upsert(rec.key_hash, loc, |l| {
                    record::decode(log, l.off as usize, prefixes)
                        .is_ok_and(|r| key_eq(&r, rec.prefix, rec.key))
                });
                added += 1;
                changed(rec.key_hash);
            });
        if let Some(why) = why
            && (stop as u64) < committed
        {
            log::warn!(
                "{}: {why} at offset {stop}; later records are ignored",
                self.log.path().display()
            );
        }
        self.tail_records += added;
        if added > 0 {
            self.delta = OnceLock::new();
        }
        self.scanned = stop as u64;
        Ok(())
    }

    /// Live entries: the index's count, plus the tail's new keys, minus its removals. The
    /// tail's part costs an index probe per key, so it is computed when asked, not on scan
    /// (which runs on open), and kept until the tail changes.
    pub(super) fn entries(&self) -> u64 {
        let indexed = self.indexed_entries();
        let delta = *self.delta.get_or_init(|| {
            let mut delta = 0i64;
            for (hash, l) in self.tail.iter() {
                let Some((_, rec)) = self.record(self.active, l.off) else {
                    continue;
                };
                let before = self.in_index(hash, rec.prefix, rec.key);
                delta += i64::from(!l.tombstone()) - i64::from(before);
            }
            delta
        });
        (indexed as i64 + delta).max(0) as u64
    }
}
