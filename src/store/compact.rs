//! Compaction: merging the tail into a new index, rewriting mostly-dead segments, clearing,
//! and rebuilding from the segments when the index is lost.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::PathBuf;

use super::tail::TailLoc;
use super::{Lookup, OnChange, Store, View, key_eq};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Index, IndexBody, SegmentInfo, Slot};
use crate::keys::{key_hash, random_seed};
use crate::lock::CompactionLock;
use crate::record::{self, Kind};
use crate::segment::{self, Dir, Staged};

/// Largest segment written by compaction's rewrite; slot offsets are `u32`.
const GC_SEGMENT_MAX: u64 = 1 << 30;

/// A log this long is sealed by the next compaction, and a new one started: only sealed
/// segments are rewritten to reclaim dead records. (Each seal leaves the records appended while
/// it ran twice on disk until the sealed log is rewritten: seals should be rare.)
const LOG_SEALED_AT: u64 = 1 << 30;

/// A new log's id leaves this many ids free below it for the segments that the compactions of
/// its lifetime rewrite (rewritten segments must sort after every other sealed one, and before
/// the log, whose records are newer: a rebuild replays segments in id order).
const LOG_ID_GAP: u32 = 1 << 12;

/// Fewer free ids than this below the log, and the next compaction seals it.
const MIN_FREE_IDS: u32 = 64;

/// The id of a new log, `LOG_ID_GAP` above the highest id in use (`None`: none is).
fn new_log_id(highest: Option<u32>) -> Result<u32> {
    match highest {
        None => Ok(LOG_ID_GAP),
        Some(id) => id.checked_add(LOG_ID_GAP).ok_or_else(|| Error::Degraded {
            reason: "segment ids exhausted (clear the cache)".into(),
        }),
    }
}

/// What compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Expired entries dropped.
    pub expired: u64,
    /// Bytes of segment files deleted or rewritten away.
    pub bytes_freed: u64,
    /// Segments rewritten because most of their bytes were dead.
    pub segments_rewritten: u64,
    /// The new index generation.
    pub generation: u64,
}

/// The next generation, built from a snapshot of the current one and staged (written under
/// temporary names and made durable) by [`Store::plan`], without the write lock when it can;
/// [`Store::commit`] publishes it. Dropped uncommitted, its files go with it.
pub(super) struct Plan {
    /// The generation it was built from: it can only replace that one.
    generation: u64,
    /// A new full index (`false`: a recent index over the current full one, which stays).
    full: bool,
    /// How much of the log the new index covers. Records appended after it are the new tail:
    /// in the same log, or copied to the start of the new one if the log is sealed.
    sealed_at: u64,
    /// The new index names the old log (it holds live records, or removals still needed).
    keeps_log: bool,
    new_active: u32,
    /// Rewritten segments and the index, renamed into place on commit.
    staged: Vec<Staged>,
    /// Segments of the old generation that the new one no longer names.
    dropped: Vec<u32>,
    report: CompactReport,
}

impl Store {
    /// Merges the tail into a new index, drops expired entries if `expire`, rewrites segments
    /// that are mostly dead. Waits for a compaction running elsewhere to finish first. Other
    /// writers are held up only while the result is published (see [`Store::compact_once`]).
    pub(crate) fn compact(
        &self,
        now: f64,
        expire: bool,
        on_change: OnChange<'_>,
    ) -> Result<CompactReport> {
        let now = if expire { now } else { f64::NEG_INFINITY };
        let _c = self.compaction_lock(true)?;
        // Another generation can only come from a clear, a rebuild, or a writer of an older
        // release (which compacts under the write lock alone); then start again from it.
        for _ in 0..3 {
            if let Some(report) = self.compact_once(now, expire, false, on_change)? {
                return Ok(report);
            }
        }
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        self.compact_locked(&mut v, now, expire, on_change)
    }

    /// The compaction an append starts when the tail is full, unless another one runs (then
    /// this process tries again a little later, not on every append). With `wait`, the tail is
    /// half again past its limit (appends outran compactions): wait for the running compaction,
    /// and compact again if that was not enough. That bounds the tail every process scans on
    /// open and probes on lookups.
    ///
    /// Writes that went on during the compaction may have filled the tail again (a full merge
    /// of a 10M-entry index takes seconds): then it compacts again at once, rather than leave
    /// that to the next append, which may never come (the end of a bulk load), so that the
    /// processes that open the cache next find a short tail.
    pub(crate) fn compact_when_full(&self, wait: bool, on_change: OnChange<'_>) -> Result<()> {
        let Some(_c) = self.compaction_lock(wait)? else {
            self.try_compaction_later();
            return Ok(());
        };
        for _ in 0..8 {
            match self.compact_once(f64::NEG_INFINITY, false, true, on_change) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    // A full disk, say: not again on every append.
                    self.try_compaction_later();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Appends do not start a compaction until the tail has grown by 1/16 of its limit.
    fn try_compaction_later(&self) {
        let v = self.view.read();
        let again = v.tail_records + self.opts.compact_records / 16;
        *self.retry_compaction.lock() = (v.generation, again);
    }

    /// Whether an append should start a compaction, and whether it must wait for one (see
    /// [`Store::compact_when_full`]). Compactions usually keep the tail at its limit (writing a
    /// recent index takes little time); writers wait only at 1.5 times [`Store::merge_at`],
    /// which a tail reaches only if writes outrun compaction, such as a full merge of a large
    /// index (seconds at 10M entries), by that much.
    pub(super) fn wants_compaction(&self, v: &View) -> (bool, bool) {
        if !self.tail_is_full(v) {
            return (false, false);
        }
        let over = |n: u64, max: u64| n >= max.saturating_add(max / 2);
        if over(v.tail_records, self.merge_at(v))
            || over(
                v.scanned.saturating_sub(v.log_start),
                self.opts.compact_bytes,
            )
        {
            return (true, true);
        }
        let (generation, again) = *self.retry_compaction.lock();
        (generation != v.generation || v.tail_records >= again, false)
    }

    pub(super) fn compaction_lock(&self, wait: bool) -> Result<Option<CompactionLock>> {
        if self.lock.is_none() {
            return Err(Error::Degraded {
                reason: format!("{} is read-only", self.dir.path.display()),
            });
        }
        CompactionLock::take(&self.dir.path, self.dir.mode, wait)
    }

    /// One compaction, by the holder of the compaction lock, in four steps (docs/format.md,
    /// "Compaction"): a snapshot of the current generation under the write lock (an instant);
    /// the next index and the rewritten segments built from it and written without the write
    /// lock (where the time goes); their files renamed into place (an instant under the lock,
    /// the directory fsync without it); under the write lock again, the new generation
    /// published (what was appended meanwhile is its tail: the log goes on, or, sealed, has it
    /// copied to the new log). `None`: nothing done,
    /// because the generation moved on in between (or, with `only_if_full`, the tail no longer
    /// needs it).
    fn compact_once(
        &self,
        now: f64,
        expire: bool,
        only_if_full: bool,
        on_change: OnChange<'_>,
    ) -> Result<Option<CompactReport>> {
        self.follow_generation(on_change)?;
        let (mut snapshot, upto) = {
            let _w = self.writer.lock();
            let _l = self.lock()?;
            let v = self.locked_view(on_change)?;
            if only_if_full && !self.tail_is_full(&v) {
                return Ok(None);
            }
            self.remove_leftovers(&v);
            (v.snapshot()?, v.scanned)
        };
        // The snapshot's tail table, read from the log without the lock.
        snapshot.scan_log(upto, |_| {})?;
        let built_from = snapshot.generation;
        // clear_expired seals the log too: it promises the space of every expired entry back.
        // A compaction asked for merges everything into a full index; one started because
        // the tail is full may write a recent index instead.
        let mut plan = self.plan(&snapshot, now, expire, expire, !only_if_full)?;
        drop(snapshot);
        if let Some(plan) = &mut plan
            && !self.put_in_place(plan, built_from)?
        {
            return Ok(None);
        }
        // What was appended meanwhile is scanned now, not under the write lock below (a large
        // merge takes long enough for tens of thousands of records to come in).
        self.refresh(on_change)?;
        let w = self.writer.lock();
        let l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        if v.generation != built_from {
            return Ok(None);
        }
        let (report, garbage) = match plan {
            Some(plan) => self.commit(&mut v, plan, !only_if_full)?,
            None => return self.rebuild_damaged(&mut v, on_change).map(Some),
        };
        drop((v, l, w));
        self.retire(&garbage)?;
        Ok(Some(report))
    }

    /// Renames the plan's staged files to their names and makes that durable, before the
    /// commit: a directory fsync waits for the file system's journal (90-130 ms at times,
    /// with a large log being written), and under the write lock it held up every writer. The
    /// renames take the lock (a clear or rebuild under it may write the same index name), and
    /// only if the generation is still the plan's (`false` otherwise: nothing renamed). Until
    /// the commit publishes them, no generation names these files; if it never does (another
    /// generation came in between, or the process died), the next compaction deletes them, as
    /// it deletes anything a dead commit left.
    fn put_in_place(&self, plan: &mut Plan, built_from: u64) -> Result<bool> {
        {
            let _w = self.writer.lock();
            let _l = self.lock()?;
            if self.control.state().generation != built_from {
                return Ok(false);
            }
            for s in plan.staged.drain(..) {
                s.publish()?;
            }
        }
        self.dir.sync()?;
        Ok(true)
    }

    /// Compaction by a caller that holds the write lock throughout (the log is about to
    /// outgrow its 32-bit offsets and must be sealed now, or other compactions kept coming
    /// in between): it seals the log, and loads the new generation at once.
    pub(super) fn compact_locked(
        &self,
        v: &mut View,
        now: f64,
        expire: bool,
        on_change: OnChange<'_>,
    ) -> Result<CompactReport> {
        let Some(plan) = self.plan(v, now, expire, true, true)? else {
            return self.rebuild_damaged(v, on_change);
        };
        let (report, garbage) = self.commit(v, plan, true)?;
        super::discard(std::mem::replace(
            v,
            self.load_view(self.control.state(), None)?,
        ));
        self.retire(&garbage)?;
        Ok(report)
    }

    /// Rebuilds from the segments an index that fails its checksum. Caller holds the locks.
    fn rebuild_damaged(&self, v: &mut View, on_change: OnChange<'_>) -> Result<CompactReport> {
        let damaged = v
            .recent
            .iter()
            .chain(&v.index)
            .find(|i| !i.verify_checksum());
        let why = match (damaged, &v.index) {
            (Some(index), _) => format!("{}: archive checksum mismatch", index.path.display()),
            (None, Some(_)) => "an index failed its checksum".to_string(),
            (None, None) => "no index loaded".to_string(),
        };
        let generation = self.rebuild_locked(v, &why)?;
        on_change(None);
        Ok(CompactReport {
            generation,
            ..CompactReport::default()
        })
    }

    /// Builds the next generation from `v` (a snapshot, or the caught-up view of a caller
    /// holding the write lock): the new index, and the rewritten segments, written under
    /// temporary names and made durable, as is the log up to where the index covers it.
    /// `None`: an index fails its checksum, and must be rebuilt instead.
    ///
    /// The new index is a recent one (over the same full index) unless `full`, `expire`, or
    /// the log holds [`Store::merge_at`] records since the full index. The log goes on as the
    /// next generation's log unless `seal` (or it is long, or the ids below it run out): then
    /// it is sealed, and a new one started.
    fn plan(
        &self,
        v: &View,
        now: f64,
        expire: bool,
        seal: bool,
        full: bool,
    ) -> Result<Option<Plan>> {
        let Some(index) = v.index.as_ref() else {
            return Ok(None);
        };
        // A log with a damaged tail (records past the intact part were published, then lost
        // in a machine crash) is sealed, never continued: going on would write over bytes
        // that other processes were told about, and may have scanned.
        let seal = seal || v.damaged_tail();
        if v.recent.as_ref().is_some_and(|r| !r.verify_checksum()) {
            return Ok(None);
        }
        let log = v.log_entries();
        if !(full || expire || seal || log.len() as u64 >= self.merge_at(v)) {
            return self.plan_recent(v, index, &log).map(Some);
        }
        if !index.verify_checksum() {
            return Ok(None);
        }
        let body = index.body();
        let mut infos = v.infos.clone();
        // The log's own removals are the newest records of their keys: all are kept.
        let log_tombstones = log
            .iter()
            .filter(|(_, l)| l.tombstone())
            .map(|(_, l)| u64::from(l.len()))
            .sum();
        match infos.iter_mut().find(|s| s.id == v.active) {
            Some(log) => {
                log.len = v.scanned;
                log.tombstones += log_tombstones;
            }
            None => infos.push(SegmentInfo {
                id: v.active,
                len: v.scanned,
                live: 0,
                tombstones: log_tombstones,
            }),
        }
        // Slots do not hold their records' lengths: live bytes change by the lengths of the
        // entries this merge adds and drops, read from records that are read anyway (to
        // compare a superseded entry's key, an expiring one's timestamp).
        let mut superseded = vec![false; index.len()];
        let mut dropped: HashMap<u32, u64> = HashMap::new();
        let mut drop_slot = |p: usize, len: usize| {
            if !std::mem::replace(&mut superseded[p], true)
                && let Some(s) = index.slot(p)
            {
                *dropped.entry(s.seg).or_default() += len as u64;
            }
        };
        let record_len = |s: Slot| v.record(s.seg, s.off).map_or(0, |(_, r)| r.len);
        let mut added = 0;
        let mut entries: Vec<Slot> =
            Vec::with_capacity(body.entries.to_native() as usize + log.len());
        for (hash, l) in &log {
            let Some((_, rec)) = v.record(v.active, l.off) else {
                // A damaged record of the recent index (its key unknown): the full index's
                // entries of its slot hash go, rather than show an older value than it held.
                for p in index.positions(*hash) {
                    drop_slot(p, index.slot(p).map_or(0, record_len));
                }
                continue;
            };
            let mut old_len = 0;
            if let Some(p) = index.position(*hash, |s| {
                v.record(s.seg, s.off).is_some_and(|(_, r)| {
                    old_len = r.len;
                    r.key_hash == *hash && key_eq(&r, rec.prefix, rec.key)
                })
            }) {
                drop_slot(p, old_len);
            }
            if !l.tombstone() {
                added += u64::from(l.len());
                entries.push(Slot {
                    hash: index::slot_hash(*hash),
                    seg: v.active,
                    off: l.off,
                });
            }
        }
        for (i, &dropped) in superseded.iter().enumerate() {
            if !dropped && let Some(s) = index.slot(i) {
                entries.push(s);
            }
        }
        let before = entries.len();
        if expire {
            // Slots hold no timestamps: records are read, here only (clear_expired), in file
            // order. An unreadable record is left to `verify`; it is never served anyway.
            let ttl = self.opts.ttl_secs;
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            entries.retain(|s| match v.record(s.seg, s.off) {
                Some((_, r)) if now - r.timestamp > ttl => {
                    *dropped.entry(s.seg).or_default() += r.len as u64;
                    false
                }
                _ => true,
            });
        }
        let expired = (before - entries.len()) as u64;

        // Which segments still hold entries: exactly, from the slots (a segment without any
        // is deleted, or rewritten for its removals); their live bytes by what changed.
        let mut holds = vec![false; infos.len()];
        let mut at = 0;
        for e in &entries {
            if infos[at].id != e.seg {
                at = infos.iter().position(|s| s.id == e.seg).unwrap_or(at);
            }
            if infos[at].id == e.seg {
                holds[at] = true;
            }
        }
        for (info, &holds) in infos.iter_mut().zip(&holds) {
            let gained = if info.id == v.active { added } else { 0 };
            let lost = dropped.get(&info.id).copied().unwrap_or(0);
            info.live = if holds {
                (info.live + gained).saturating_sub(lost)
            } else {
                0
            };
        }
        let holding: HashSet<u32> = infos
            .iter()
            .zip(&holds)
            .filter(|(_, h)| **h)
            .map(|(s, _)| s.id)
            .collect();
        // Still needed: for its entries, or for removals a rebuild must not lose.
        let needed = |s: &SegmentInfo| holding.contains(&s.id) || s.tombstones > 0;
        // Rewritten segments go below the log if it goes on, else above it (and the new log
        // above them).
        let below_log = infos
            .iter()
            .map(|s| s.id)
            .filter(|&id| id < v.active)
            .max()
            .map_or(0, |id| id + 1);
        let seal =
            seal || v.scanned >= LOG_SEALED_AT || v.active.saturating_sub(below_log) < MIN_FREE_IDS;
        let (first_id, id_limit) = if seal {
            let top = infos.iter().map(|s| s.id).max().unwrap_or(0).max(v.active);
            (top + 1, u32::MAX - LOG_ID_GAP)
        } else {
            (below_log, v.active)
        };
        let rewrite: HashSet<u32> = infos
            .iter()
            .filter(|s| seal || s.id != v.active)
            .filter(|s| {
                let dead = s.len.saturating_sub(s.live + s.tombstones);
                let worth = if expire {
                    // clear_expired promises the space back: any segment a quarter dead or
                    // removals, and those holding only removals (the ones still needed move,
                    // the rest go: a removal whose key came back is counted as kept until then).
                    let reclaimable = dead + s.tombstones;
                    (reclaimable > 0 && reclaimable * 4 >= s.len) || !holding.contains(&s.id)
                } else {
                    // Routine compaction rewrites only big, mostly dead segments.
                    dead > 0 && dead >= self.opts.gc_min_dead && dead >= s.live
                };
                needed(s) && worth
            })
            .map(|s| s.id)
            .collect();
        let nonce = random_seed();
        let mut out = Rewriter::new(self, first_id, id_limit, nonce);
        if !rewrite.is_empty() {
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            for e in entries.iter_mut().filter(|e| rewrite.contains(&e.seg)) {
                let Some(src) = v.map_of(e.seg) else { continue };
                let Ok(rec) = record::decode(src.bytes(), e.off as usize, &v.prefixes) else {
                    continue;
                };
                let at = e.off as usize;
                (e.seg, e.off) = out.copy(&src.bytes()[at..at + rec.len], true)?;
            }
            let mut moved = HashSet::new();
            for s in infos.iter().filter(|s| rewrite.contains(&s.id)) {
                out.copy_removals(v, s, &mut moved)?;
            }
        }
        let (new_infos, staged, next_id) = out.finish()?;
        let mut kept: Vec<SegmentInfo> = infos
            .iter()
            .filter(|s| needed(s) && !rewrite.contains(&s.id))
            .copied()
            .chain(new_infos)
            .collect();
        let new_active = if seal {
            new_log_id(Some(next_id))?
        } else {
            v.active
        };
        if seal {
            // The sealed log is trimmed on commit to what was appended by then, past what
            // this index covers (those records go to the new log too): the index says "the
            // whole file", so that the dead copies are counted, and reclaimed.
            for s in kept.iter_mut().filter(|s| s.id == v.active) {
                s.len = index::WHOLE_FILE;
            }
        }
        let referenced: HashSet<u32> = kept.iter().map(|s| s.id).chain([new_active]).collect();
        let dropped: Vec<u32> = infos
            .iter()
            .map(|s| s.id)
            .filter(|id| !referenced.contains(id))
            .collect();
        let freed: u64 = infos
            .iter()
            .filter(|s| !referenced.contains(&s.id))
            .map(|s| s.len)
            .sum();
        let keeps_log = referenced.contains(&v.active);
        if let (Some(log), true) = (&v.log, keeps_log) {
            log.sync_data().ctx("sync segment", &v.log_path)?;
        }
        let generation = v.generation + 1;
        let body = IndexBody::build(
            generation,
            self.seed(),
            body.epoch.to_native(),
            new_active,
            if seal { 0 } else { v.scanned },
            kept,
            entries,
        )?;
        let mut plan = Plan {
            generation: v.generation,
            full: true,
            sealed_at: v.scanned,
            keeps_log,
            new_active,
            staged,
            dropped,
            report: CompactReport {
                expired,
                bytes_freed: freed,
                segments_rewritten: rewrite.len() as u64,
                generation,
            },
        };
        let name = index::index_name(generation);
        plan.staged.push(
            self.dir
                .write_staged(&name, nonce, &body.to_file_bytes()?)?,
        );
        Ok(Some(plan))
    }

    /// The next generation's recent index: the newest record of each key the log got since
    /// the full index (`log`), removals included, over that same full index. Nothing else
    /// changes: the log goes on, and the segments are the same. It costs O(log records), not
    /// O(entries).
    fn plan_recent(&self, v: &View, index: &Index, log: &[(u64, TailLoc)]) -> Result<Plan> {
        let slots = log
            .iter()
            .map(|(hash, l)| Slot {
                hash: index::slot_hash(*hash),
                seg: v.active,
                off: l.off,
            })
            .collect();
        let record_bytes = log.iter().map(|(_, l)| u64::from(l.len())).sum();
        // The records it points at must be as durable as it is.
        if let Some(file) = &v.log {
            file.sync_data().ctx("sync segment", &v.log_path)?;
        }
        let generation = v.generation + 1;
        let base = index.body();
        let body = IndexBody::build(
            generation,
            self.seed(),
            base.epoch.to_native(),
            v.active,
            v.scanned,
            v.infos.clone(),
            slots,
        )?
        .over(base.generation.to_native(), v.entries(), record_bytes);
        let nonce = random_seed();
        let name = index::index_name(generation);
        let staged = self
            .dir
            .write_staged(&name, nonce, &body.to_file_bytes()?)?;
        Ok(Plan {
            generation: v.generation,
            full: false,
            sealed_at: v.scanned,
            keeps_log: true,
            new_active: v.active,
            staged: vec![staged],
            dropped: Vec::new(),
            report: CompactReport {
                generation,
                ..CompactReport::default()
            },
        })
    }

    /// Publishes a plan built from `v`'s generation. Caller holds the locks; `v` is caught up,
    /// and stays a view of the old generation (the next lookup or append loads the new one,
    /// outside the lock). Returns the files the new generation no longer names, for
    /// [`Store::retire`]. `asked`: a compaction asked for (`compact`, `clear_expired`), which
    /// gives back all the space reserved past the log's end.
    fn commit(
        &self,
        v: &mut View,
        mut plan: Plan,
        asked: bool,
    ) -> Result<(CompactReport, Vec<PathBuf>)> {
        debug_assert_eq!(plan.generation, v.generation);
        let committed = if plan.new_active == v.active {
            // The log goes on: what was appended since the snapshot is the new tail. The space
            // reserved past it is given back (every writer maps the log afresh in the new
            // generation, and reserves again as it appends), but for a large log's last,
            // partly filled 2 MiB (`segment::huge_aligned`), unless the compaction was asked
            // for. Only ever shrunk: what stays is space reserved before.
            if let Some(log) = &v.log {
                let len = log.metadata().ctx("stat segment", &v.log_path)?.len();
                let keep = if asked {
                    v.scanned
                } else {
                    segment::huge_aligned(v.scanned)
                }
                .max(v.seen_committed);
                if keep < len {
                    log.set_len(keep).ctx("trim segment", &v.log_path)?;
                }
            }
            v.scanned
        } else {
            // Records appended since the snapshot go, as they are, to the start of the new
            // log, whose id sorts after every rewritten segment.
            let (log, log_path) = self.dir.create_log(plan.new_active)?;
            let start = usize::try_from(plan.sealed_at).unwrap_or(usize::MAX);
            let end = usize::try_from(v.scanned).unwrap_or(usize::MAX);
            let appended = v.log_map.bytes().get(start..end).unwrap_or_default();
            if !appended.is_empty() {
                segment::append_at(&log, &log_path, 0, appended)?;
            }
            if let (Some(old), true) = (&v.log, plan.keeps_log) {
                // Seal: trim the space reserved past the published length (nobody reads it),
                // never below it (a damaged tail stays, as dead bytes, until the segment is
                // rewritten into a new file).
                let keep = v.scanned.max(v.seen_committed);
                let len = old.metadata().ctx("stat segment", &v.log_path)?.len();
                if keep < len {
                    old.set_len(keep).ctx("seal segment", &v.log_path)?;
                }
            }
            appended.len() as u64
        };
        // Files not put in place yet (`compact_locked`), or a new log: made durable before
        // the generation that names them is published.
        let new_names = !plan.staged.is_empty() || plan.new_active != v.active;
        for s in plan.staged.drain(..) {
            s.publish()?;
        }
        if new_names {
            self.dir.sync()?;
        }
        self.control
            .publish_generation(plan.report.generation, committed, plan.new_active);
        let mut garbage: Vec<PathBuf> = plan
            .dropped
            .iter()
            .map(|&id| self.dir.join(&segment::segment_name(id)))
            .collect();
        garbage.extend(v.recent.as_ref().map(|i| i.path.clone()));
        if plan.full {
            garbage.extend(v.index.as_ref().map(|i| i.path.clone()));
        }
        Ok((plan.report.clone(), garbage))
    }

    /// Removes what writers that died left behind: staged files, segments and indexes the
    /// current generation does not name (among them segments newer than its log, written by a
    /// commit that never published them: a rebuild would replay those over newer records).
    /// Caller holds the compaction lock and the write lock, so no compaction is under way.
    fn remove_leftovers(&self, v: &View) {
        let named: HashSet<u32> = v.infos.iter().map(|s| s.id).chain([v.active]).collect();
        self.remove_unnamed(&named, &v.index_generations(), true);
    }

    /// Deletes the segments not in `named`, the indexes of other generations than those of
    /// `indexes`, and, with `staged`, compaction's staged files (only when no compaction can be
    /// under way).
    fn remove_unnamed(&self, named: &HashSet<u32>, indexes: &[u64], staged: bool) {
        let Ok(entries) = fs::read_dir(&self.dir.path) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let stale = (staged && segment::is_staged(name))
                || segment::parse_segment_name(name).is_some_and(|id| !named.contains(&id))
                || index::parse_index_name(name).is_some_and(|g| !indexes.contains(&g));
            if stale {
                log::debug!("removing {name}: no longer part of the cache");
                self.remove_garbage(&[e.path()]);
            }
        }
    }

    /// Makes the published generation durable, then deletes the files of the old one.
    fn retire(&self, garbage: &[PathBuf]) -> Result<()> {
        self.control.flush(&self.ctl_path)?;
        self.remove_garbage(garbage);
        Ok(())
    }

    fn remove_garbage(&self, paths: &[PathBuf]) {
        for p in paths {
            match fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    log::warn!("cannot remove {}: {e}", p.display());
                }
                _ => {}
            }
        }
    }

    /// Writes the index of a new generation, publishes it, deletes what it no longer refers to
    /// and maps it. Caller holds the locks.
    pub(super) fn install(&self, v: &mut View, body: IndexBody) -> Result<()> {
        let generation = body.generation;
        let referenced: HashSet<u32> = body
            .segments
            .iter()
            .map(|s| s.id)
            .chain([body.active_segment])
            .collect();
        // The active segment exists before any index names it.
        self.dir.open_log(body.active_segment)?;
        self.dir
            .write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        self.dir.sync()?;
        self.control
            .publish_generation(generation, 0, body.active_segment);
        self.control.flush(&self.ctl_path)?;
        // A compaction may be under way (clear and rebuild do not take its lock): its staged
        // files stay; it finds the generation changed and removes them itself.
        self.remove_unnamed(&referenced, &[generation], false);
        *v = self.load_view(self.control.state(), None)?;
        Ok(())
    }

    /// The first generation of a new cache: an empty index and its empty log, whose id it
    /// returns.
    pub(super) fn write_empty_generation(dir: &Dir, seed: u64, generation: u64) -> Result<u32> {
        let log = new_log_id(None)?;
        let body = IndexBody::build(generation, seed, generation, log, 0, Vec::new(), Vec::new())?;
        dir.open_log(log)?;
        dir.write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        dir.sync()?;
        Ok(log)
    }

    /// Removes every entry: a new, empty generation; all segments deleted.
    pub(crate) fn clear(&self, on_change: OnChange<'_>) -> Result<()> {
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        let generation = v.generation + 1;
        let segments = self.list_segments()?;
        let active = new_log_id(segments.last().copied())?;
        // Segments go first, so that clearing works on a full disk. A crash in between leaves
        // an index whose segments are gone, which open rebuilds (from nothing: cleared).
        for id in segments {
            let p = self.dir.join(&segment::segment_name(id));
            fs::remove_file(&p).ctx("remove segment", &p)?;
        }
        // Unmap them too: a deleted file's space comes back when the last map goes.
        *v = Self::empty_view(&self.dir, &self.prefixes);
        let body = IndexBody::build(
            generation,
            self.seed(),
            generation,
            active,
            0,
            Vec::new(),
            Vec::new(),
        )?;
        self.install(&mut v, body)?;
        on_change(None);
        Ok(())
    }

    /// Rebuilds the index from every segment in the directory, rewriting the live records into
    /// a fresh segment. Caller holds the write lock (or is creating the store).
    pub(super) fn rebuild_locked(&self, v: &mut View, why: &str) -> Result<u64> {
        log::warn!(
            "{}: {why}; rebuilding from the segments",
            self.dir.path.display()
        );
        let all = self.list_segments()?;
        // Segments above the published log were written by a compaction that died before
        // publishing them: copies, older than what the log got since (install removes them).
        let limit = self.control.log_id().unwrap_or(u32::MAX);
        let ids: Vec<u32> = all.iter().copied().filter(|&id| id <= limit).collect();
        let mut maps = Vec::new();
        for &id in &ids {
            let p = self.dir.join(&segment::segment_name(id));
            let file = File::open(&p).ctx("open segment", &p)?;
            let len = file.metadata().ctx("stat segment", &p)?.len();
            maps.push(segment::map_segment(&file, &p, len)?);
        }
        // Newest record of each key, replaying segments in id order.
        let mut latest: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
        for (m, map) in maps.iter().enumerate() {
            segment::scan(map.bytes(), 0, &self.prefixes, |off, rec| {
                // A prefix whose number the table lacks cannot be hashed: its records are lost.
                let Some(prefix) = std::str::from_utf8(rec.prefix)
                    .ok()
                    .filter(|p| !p.is_empty())
                else {
                    return;
                };
                let hash = key_hash(self.seed(), prefix, rec.key);
                let locs = latest.entry(hash).or_default();
                let same = locs.iter().position(|&(m2, o2)| {
                    record::decode(maps[m2].bytes(), o2, &self.prefixes)
                        .is_ok_and(|r| key_eq(&r, rec.prefix, rec.key))
                });
                match same {
                    Some(i) => locs[i] = (m, off),
                    None => locs.push((m, off)),
                }
            });
        }
        let id = all.last().map_or(0, |i| i + 1);
        let (file, path) = self.dir.open_log(id)?;
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        for (hash, locs) in latest {
            for (m, off) in locs {
                let Ok(rec) = record::decode(maps[m].bytes(), off, &self.prefixes) else {
                    continue;
                };
                if rec.kind == Kind::Tombstone {
                    continue;
                }
                let at = buf.len();
                record::encode(
                    &mut buf,
                    rec.kind,
                    hash,
                    rec.timestamp,
                    rec.value,
                    rec.prefix_field(),
                    rec.key,
                );
                entries.push(Slot {
                    hash: index::slot_hash(hash),
                    seg: id,
                    off: at as u32,
                });
            }
        }
        segment::append_at(&file, &path, 0, &buf)?;
        file.sync_all().ctx("sync segment", &path)?;
        let info = SegmentInfo {
            id,
            len: buf.len() as u64,
            live: buf.len() as u64,
            tombstones: 0,
        };
        let generation = self.control.state().generation + 1;
        let segments = if buf.is_empty() {
            Vec::new()
        } else {
            vec![info]
        };
        self.install(
            v,
            IndexBody::build(
                generation,
                self.seed(),
                generation,
                new_log_id(Some(id))?,
                0,
                segments,
                entries,
            )?,
        )?;
        Ok(generation)
    }
}

/// Where compaction copies the records of the segments it rewrites: new segments of at most
/// `GC_SEGMENT_MAX` bytes, written in 8 MiB pieces and fsynced when full.
struct Rewriter<'a> {
    store: &'a Store,
    /// Bytes so far of the segment being written (the last staged one), if one is open.
    written: Option<u64>,
    buf: Vec<u8>,
    infos: Vec<SegmentInfo>,
    staged: Vec<Staged>,
    next_id: u32,
    /// The first id it may not use.
    id_limit: u32,
    nonce: u64,
}

impl<'a> Rewriter<'a> {
    fn new(store: &'a Store, next_id: u32, id_limit: u32, nonce: u64) -> Self {
        Self {
            store,
            written: None,
            buf: Vec::new(),
            infos: Vec::new(),
            staged: Vec::new(),
            next_id,
            id_limit,
            nonce,
        }
    }

    /// Copies one record: a live entry's (an index slot will point at it) or a removal kept.
    /// Returns where it went.
    fn copy(&mut self, bytes: &[u8], live: bool) -> Result<(u32, u32)> {
        let len = bytes.len() as u64;
        if self.written.is_none_or(|w| w + len > GC_SEGMENT_MAX) {
            self.finish_segment()?;
            if self.next_id >= self.id_limit {
                return Err(Error::Degraded {
                    reason: "no segment id left for rewritten segments".into(),
                });
            }
            let name = segment::segment_name(self.next_id);
            self.staged
                .push(self.store.dir.create_staged(&name, self.nonce)?);
            self.infos.push(SegmentInfo {
                id: self.next_id,
                len: 0,
                live: 0,
                tombstones: 0,
            });
            self.next_id += 1;
            self.written = Some(0);
        }
        let (Some(written), Some(info)) = (self.written.as_mut(), self.infos.last_mut()) else {
            return Err(Error::Degraded {
                reason: "no segment to rewrite into".into(),
            });
        };
        let at = (info.id, *written as u32);
        self.buf.extend_from_slice(bytes);
        *written += len;
        info.len = *written;
        if live {
            info.live += len;
        } else {
            info.tombstones += len;
        }
        if self.buf.len() >= 8 << 20 {
            self.write_out()?;
        }
        Ok(at)
    }

    /// Copies the removals of `seg` whose keys are still absent (each key once: `moved`).
    /// A removal must outlive the records it hides: a rebuild from the segments (after damage)
    /// replays what is left, and would bring a removed entry back if the removal went while an
    /// older record of the key stayed.
    fn copy_removals<'v>(
        &mut self,
        v: &'v View,
        seg: &SegmentInfo,
        moved: &mut HashSet<(u64, &'v [u8], &'v [u8])>,
    ) -> Result<()> {
        if seg.tombstones == 0 {
            return Ok(());
        }
        let Some(src) = v.map_of(seg.id) else {
            return Ok(());
        };
        let valid = &src.bytes()[..(seg.len as usize).min(src.bytes().len())];
        let mut found = Vec::new();
        segment::scan(valid, 0, &v.prefixes, |off, rec| {
            if rec.kind == Kind::Tombstone {
                found.push((off, rec.len, rec.key_hash, rec.prefix, rec.key));
            }
        });
        for (off, len, hash, prefix, key) in found {
            let absent = v
                .find(hash, prefix, key, Lookup::Alone)
                .is_none_or(|(_, r)| r.kind == Kind::Tombstone);
            if absent && moved.insert((hash, prefix, key)) {
                self.copy(&valid[off..off + len], false)?;
            }
        }
        Ok(())
    }

    /// Writes the buffered end of the segment being written.
    fn write_out(&mut self) -> Result<()> {
        if let (Some(written), Some(s)) = (self.written, self.staged.last()) {
            let at = written - self.buf.len() as u64;
            segment::append_at(&s.file, &s.path, at, &self.buf)?;
        }
        self.buf.clear();
        Ok(())
    }

    fn finish_segment(&mut self) -> Result<()> {
        if self.written.is_some() {
            self.write_out()?;
            if let Some(s) = self.staged.last() {
                s.file.sync_all().ctx("sync segment", &s.path)?;
            }
            self.written = None;
        }
        Ok(())
    }

    /// The segments written (durable, under their staged names), and the next free id.
    fn finish(mut self) -> Result<(Vec<SegmentInfo>, Vec<Staged>, u32)> {
        self.finish_segment()?;
        let infos = std::mem::take(&mut self.infos);
        Ok((infos, std::mem::take(&mut self.staged), self.next_id))
    }
}
