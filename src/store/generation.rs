//! The next generation: planning it from a snapshot of the current one (a recent or a full
//! index, segments to rewrite, whether the log is sealed) and publishing it.

use std::collections::{HashMap, HashSet};

use super::evict;
use super::garbage::Garbage;
use super::rewrite::Rewriter;
use super::tail::TailLoc;
use super::{Store, View, key_eq};
use crate::error::{Error, IoContext, Result};
use crate::files::{self, Staged};
use crate::index::{self, Index, IndexBody, SegmentInfo, Slot};
use crate::keys::random_seed;
use crate::record::{self};
use crate::segment;

/// A new log's id leaves this many ids free below it for the segments that the compactions of
/// its lifetime rewrite (rewritten segments must sort after every other sealed one, and before
/// the log, whose records are newer: a rebuild replays segments in id order).
const LOG_ID_GAP: u32 = 1 << 12;

/// Where an entry the plan evicts is marked before it is dropped (no segment has this id).
const EVICTED: u32 = u32::MAX;

/// Fewer free ids than this below the log, and the next compaction seals it.
const MIN_FREE_IDS: u32 = 64;

/// What compaction did.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &1)?;
/// let first = cache.compact()?;
/// let second = cache.compact()?;
/// assert!(second.generation > first.generation);
/// assert_eq!((second.expired, second.evicted), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Expired entries dropped.
    pub expired: u64,
    /// Entries evicted to keep the directory within its disk bound.
    pub evicted: u64,
    /// Bytes of segment files deleted or rewritten away.
    pub bytes_freed: u64,
    /// Segments rewritten because most of their bytes were dead.
    pub segments_rewritten: u64,
    /// The new index generation.
    pub generation: u64,
}

/// The id of a new log, `LOG_ID_GAP` above the highest id in use (`None`: none is).
pub(super) fn new_log_id(highest: Option<u32>) -> Result<u32> {
    match highest {
        None => Ok(LOG_ID_GAP),
        Some(id) => id.checked_add(LOG_ID_GAP).ok_or_else(|| Error::Degraded {
            reason: "segment ids exhausted (clear the cache)".into(),
        }),
    }
}

/// The next generation, built from a snapshot of the current one and staged (written under
/// temporary names and made durable) by [`Store::plan`], without the write lock when it can;
/// [`Store::commit`] publishes it. Dropped uncommitted, its files go with it.
pub(super) struct Plan {
    /// The generation it was built from: it can only replace that one.
    pub(super) generation: u64,
    /// A new full index (`false`: a recent index over the current full one, which stays).
    pub(super) full: bool,
    /// How much of the log the new index covers. Records appended after it are the new tail:
    /// in the same log, or copied to the start of the new one if the log is sealed.
    pub(super) sealed_at: u64,
    /// The new index names the old log (it holds live records, or removals still needed).
    pub(super) keeps_log: bool,
    pub(super) new_active: u32,
    /// Rewritten segments and the index, renamed into place on commit.
    pub(super) staged: Vec<Staged>,
    /// Segments of the old generation that the new one no longer names.
    pub(super) dropped: Vec<u32>,
    pub(super) report: CompactReport,
}

impl Store {
    /// Builds the next generation from `v` (a snapshot, or the caught-up view of a caller
    /// holding the write lock): the new index, and the rewritten segments, written under
    /// temporary names and made durable, as is the log up to where the index covers it.
    /// `None`: an index fails its checksum, and must be rebuilt instead.
    ///
    /// The new index is a recent one (over the same full index) unless `full`, `expire`, or
    /// the log holds [`Store::merge_at`] records since the full index. The log goes on as the
    /// next generation's log unless `seal` (or it is long, or the ids below it run out): then
    /// it is sealed, and a new one started.
    pub(super) fn plan(
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
        // Over the disk bound, a full merge evicts; a log as long as a bounded cache's
        // segments are is sealed by one.
        // One listing of the directory serves the bound and the choice of free segment ids.
        let on_disk = evict::Usage::measure(&self.dir.path);
        let eviction = self.eviction_due(v, &on_disk);
        let seal = seal || v.scanned >= self.seal_at();
        if !(full || expire || seal || eviction.is_some() || log.len() as u64 >= self.merge_at(v)) {
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
        // Not an id whose file is still there either: a segment an earlier generation dropped
        // is deleted a few milliseconds after it was published, by path (see
        // `garbage::retire`), and must not take a new segment of that name with it.
        let below_log = infos
            .iter()
            .map(|s| s.id)
            .chain(on_disk.segments.keys().copied())
            .filter(|&id| id < v.active)
            .max()
            .map_or(0, |id| id + 1);
        let seal = seal || v.active.saturating_sub(below_log) < MIN_FREE_IDS;
        let (first_id, id_limit) = if seal {
            let top = infos
                .iter()
                .map(|s| s.id)
                .chain(on_disk.segments.keys().copied())
                .max()
                .unwrap_or(0)
                .max(v.active);
            (top + 1, u32::MAX - LOG_ID_GAP)
        } else {
            (below_log, v.active)
        };
        let victims = match &eviction {
            Some(to_free) => evict::victims(&infos, v.active, &on_disk, *to_free, needed),
            None => HashSet::new(),
        };
        if !victims.is_empty() {
            kill_point!("evict.chosen");
        }
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
                    dead > 0 && dead >= self.gc_min_dead() && dead >= s.live
                };
                needed(s) && worth
            })
            .map(|s| s.id)
            .chain(victims.iter().copied())
            .collect();
        let nonce = random_seed();
        let mut out = Rewriter::new(self, first_id, id_limit, nonce);
        let mut evicted = 0;
        if !rewrite.is_empty() {
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            // An evicted segment's entries that were read since it was written (or since an
            // eviction last kept them) are kept once more, up to half of its live bytes; the
            // rest are dropped.
            let mut kept = Vec::new();
            let mut keep_budget: u64 = infos
                .iter()
                .filter(|s| victims.contains(&s.id))
                .map(|s| s.live / 2)
                .sum();
            for e in entries.iter_mut().filter(|e| rewrite.contains(&e.seg)) {
                let evicting = victims.contains(&e.seg);
                let Some(src) = v.map_of(e.seg) else { continue };
                let Ok(rec) = record::decode(src.bytes(), e.off as usize, &v.prefixes) else {
                    if evicting {
                        e.seg = EVICTED;
                    }
                    continue;
                };
                if evicting {
                    let hot = self.heat.as_ref().is_some_and(|h| h.is_hot(rec.key_hash));
                    if !hot || keep_budget < rec.len as u64 {
                        e.seg = EVICTED;
                        continue;
                    }
                    keep_budget -= rec.len as u64;
                    kept.push(rec.key_hash);
                }
                let at = e.off as usize;
                (e.seg, e.off) = out.copy(&src.bytes()[at..at + rec.len], true)?;
            }
            // Kept once: a new read is needed to be kept again (cleared only now: see
            // `Heat::cool`).
            if let Some(h) = &self.heat {
                kept.iter().for_each(|&hash| h.cool(hash));
            }
            let before = entries.len();
            entries.retain(|e| e.seg != EVICTED);
            evicted = (before - entries.len()) as u64;
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
        if keeps_log {
            v.log.sync()?;
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
                evicted,
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
        kill_point!("plan.index_staged");
        Ok(Some(plan))
    }

    /// The next generation's recent index: the newest record of each key the log got since
    /// the full index (`log`), removals included, over that same full index. Nothing else
    /// changes: the log goes on, and the segments are the same. It costs O(log records), not
    /// O(entries).
    pub(super) fn plan_recent(
        &self,
        v: &View,
        index: &Index,
        log: &[(u64, TailLoc)],
    ) -> Result<Plan> {
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
        v.log.sync()?;
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
        kill_point!("plan.recent_index_staged");
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
    pub(super) fn commit(
        &self,
        v: &mut View,
        mut plan: Plan,
        asked: bool,
    ) -> Result<(CompactReport, Garbage)> {
        debug_assert_eq!(plan.generation, v.generation);
        let committed = if plan.new_active == v.active {
            // The log goes on: what was appended since the snapshot is the new tail. The space
            // reserved past it is given back (every writer maps the log afresh in the new
            // generation, and reserves again as it appends), but for a large log's last,
            // partly filled 2 MiB (`segment::huge_aligned`), unless the compaction was asked
            // for. Only ever shrunk: what stays is space reserved before.
            let keep = if asked {
                v.scanned
            } else {
                segment::huge_aligned(v.scanned)
            };
            self.control.announce_trim();
            kill_point!("commit.trim_announced");
            v.log
                .shrink_to(keep.max(v.seen_committed), "trim segment")?;
            kill_point!("commit.trimmed");
            v.scanned
        } else {
            // Records appended since the snapshot go, as they are, to the start of the new
            // log, whose id sorts after every rewritten segment.
            let (log, log_path) = self.dir.create_log(plan.new_active)?;
            let start = usize::try_from(plan.sealed_at).unwrap_or(usize::MAX);
            let end = usize::try_from(v.scanned).unwrap_or(usize::MAX);
            let appended = v.log.map().bytes().get(start..end).unwrap_or_default();
            if !appended.is_empty() {
                files::append_at(&log, &log_path, 0, appended)?;
                kill_point!("commit.tail_copied");
                // Made durable before the generation that names it is published: records
                // flushed to the old log live on here only.
                files::sync_file(&log, true).ctx("sync segment", &log_path)?;
            }
            kill_point!("commit.new_log");
            if plan.keeps_log {
                // Seal: trim the space reserved past the published length (nobody reads it),
                // never below it (a damaged tail stays, as dead bytes, until the segment is
                // rewritten into a new file).
                self.control.announce_trim();
                v.log
                    .shrink_to(v.scanned.max(v.seen_committed), "seal segment")?;
                kill_point!("commit.sealed");
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
        kill_point!("commit.before_publish");
        self.control
            .publish_generation(plan.report.generation, committed, plan.new_active);
        kill_point!("commit.published");
        // The old log, dropped by the generation that sealed it, keeps its blocks until the
        // last process lets go of it: one that follows from the old generation reads the rest
        // of it to learn which keys changed (and would otherwise drop its whole RAM tier).
        let mut garbage = Garbage::default();
        for &id in &plan.dropped {
            let path = self.dir.join(&segment::segment_name(id));
            if id == v.active {
                garbage.keep_blocks.push(path);
            } else {
                garbage.files.push(path);
            }
        }
        garbage
            .files
            .extend(v.recent.as_ref().map(|i| i.path.clone()));
        if plan.full {
            garbage
                .files
                .extend(v.index.as_ref().map(|i| i.path.clone()));
        }
        Ok((plan.report.clone(), garbage))
    }
}
