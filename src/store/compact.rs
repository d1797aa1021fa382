//! Compaction policy: when the log is merged into a new index (by a write that fills it, on
//! the compaction thread, or when asked), one compaction at a time per directory, without the
//! write lock but for its last steps. How the next generation is built is `generation.rs`;
//! rebuilding and clearing, `rebuild.rs`; rewriting segments, `rewrite.rs`.

use super::generation::{CompactReport, Plan};
use super::{Store, View};
use crate::error::{Error, Result};
use crate::lock::CompactionLock;

impl Store {
    /// Merges the tail into a new index, drops expired entries if `expire`, rewrites segments
    /// that are mostly dead. Waits for a compaction running elsewhere to finish first. Other
    /// writers are held up only while the result is published (see [`Store::compact_once`]).
    pub(crate) fn compact(&self, now: f64, expire: bool) -> Result<CompactReport> {
        let _c = self.compaction_lock(true)?;
        self.compact_holding_lock(now, expire)
    }

    /// [`Store::compact`], by the holder of the compaction lock.
    fn compact_holding_lock(&self, now: f64, expire: bool) -> Result<CompactReport> {
        let now = if expire { now } else { f64::NEG_INFINITY };
        // Another generation can only come from a clear, a rebuild, or a writer of an older
        // release (which compacts under the write lock alone); then start again from it.
        for _ in 0..3 {
            if let Some(report) = self.compact_once(now, expire, false)? {
                return Ok(report);
            }
        }
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view()?;
        self.compact_locked(&mut v, now, expire)
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
    pub(crate) fn compact_when_full(&self, wait: bool) -> Result<()> {
        let Some(_c) = self.compaction_lock(wait)? else {
            self.try_compaction_later();
            return Ok(());
        };
        // Expired entries give their space back by themselves: every quarter of the TTL one
        // of these compactions (in the whole pool) is a `clear_expired`.
        let now = self.clock.now();
        if self.control.claim_expiry_pass(now, self.expiry_every()) {
            kill_point!("expiry.claimed");
            if let Err(e) = self.compact_holding_lock(now, true) {
                self.try_compaction_later();
                return Err(e);
            }
        }
        for _ in 0..8 {
            match self.compact_once(f64::NEG_INFINITY, false, true) {
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

    /// How often expired entries are reclaimed without being asked: every quarter of the TTL,
    /// at most once a second.
    fn expiry_every(&self) -> f64 {
        (self.opts.ttl_secs / 4.0).max(1.0)
    }

    /// Whether an automatic expiry pass is due now (nobody has claimed it yet): a process that
    /// opens the cache then starts a compaction, which does it.
    pub(crate) fn expiry_due(&self) -> bool {
        self.is_writable()
            && self
                .control
                .expiry_due(self.clock.now(), self.expiry_every())
    }

    /// Appends do not start a compaction until the tail has grown by 1/16 of its limit.
    pub(super) fn try_compaction_later(&self) {
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
            || over(v.scanned.saturating_sub(v.log_start), self.compact_bytes())
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
    pub(super) fn compact_once(
        &self,
        now: f64,
        expire: bool,
        only_if_full: bool,
    ) -> Result<Option<CompactReport>> {
        let started = std::time::Instant::now();
        self.follow_generation()?;
        let (mut snapshot, upto) = {
            let _w = self.writer.lock();
            let _l = self.lock()?;
            let v = self.locked_view()?;
            if only_if_full && !self.tail_is_full(&v) {
                return Ok(None);
            }
            self.remove_leftovers(&v);
            kill_point!("compact.leftovers_removed");
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
        self.refresh()?;
        let w = self.writer.lock();
        let l = self.lock()?;
        let mut v = self.locked_view()?;
        if v.generation != built_from {
            return Ok(None);
        }
        let (report, garbage) = match plan {
            Some(plan) => self.commit(&mut v, plan, !only_if_full)?,
            None => return self.rebuild_damaged(&mut v).map(Some),
        };
        drop((v, l, w));
        // The dropped files are deleted before the compaction lock is let go (after their
        // grace): a later compaction's `remove_leftovers` would otherwise delete them at once
        // and its plan reuse a dropped segment's id, whose delayed deletion by name then took
        // the new segment with it.
        self.retire(garbage)?;
        self.count_compaction(started, &report);
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
    pub(super) fn put_in_place(&self, plan: &mut Plan, built_from: u64) -> Result<bool> {
        {
            let _w = self.writer.lock();
            let _l = self.lock()?;
            if self.control.state().generation != built_from {
                return Ok(false);
            }
            for s in plan.staged.drain(..) {
                s.publish()?;
                kill_point!("compact.renamed");
            }
        }
        self.dir.sync()?;
        kill_point!("compact.renames_synced");
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
    ) -> Result<CompactReport> {
        let started = std::time::Instant::now();
        let Some(plan) = self.plan(v, now, expire, true, true)? else {
            return self.rebuild_damaged(v);
        };
        let (report, garbage) = self.commit(v, plan, true)?;
        super::discard(std::mem::replace(
            v,
            self.load_view(self.control.state(), None)?,
        ));
        self.retire(garbage)?;
        self.count_compaction(started, &report);
        Ok(report)
    }

    /// Rebuilds from the segments an index that fails its checksum. Caller holds the locks.
    pub(super) fn rebuild_damaged(&self, v: &mut View) -> Result<CompactReport> {
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
        (self.on_change)(None);
        Ok(CompactReport {
            generation,
            ..CompactReport::default()
        })
    }
}
