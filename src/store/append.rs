//! Appending records to the log: under the write lock, after catching up, at the committed
//! length (through the writer's mapping or `pwrite`), then publishing the new length.

use super::{Lookup, Store, View};
use crate::error::Result;
use crate::record;

impl Store {
    /// Appends encoded records (under the lock) and publishes them. `true`: the log is past its
    /// thresholds, and the caller should start a compaction ([`Store::compact_when_full`]).
    /// (Half again past the thresholds, this waits for one itself.)
    /// `published` runs once the records are visible, before any other writer of this process
    /// can append: the place to update the RAM tier without racing another thread's write.
    pub(crate) fn append(&self, bytes: &[u8], published: impl FnOnce()) -> Result<bool> {
        self.append_with(|_| bytes.into(), published)
    }

    /// Appends those of the encoded `records` whose key has no record yet in any process (no
    /// value, no removal, expired or not), checked under the write lock, so that a record
    /// another process wrote first is never superseded by them: how entries of the original's
    /// files come in (a value written through the cache is newer than any such file). Returns
    /// how many were appended, and whether to start a compaction (as [`Store::append`]).
    pub(crate) fn append_absent(&self, records: &[u8]) -> Result<(u64, bool)> {
        let mut appended = 0;
        let full = self.append_with(
            |v| {
                let mut kept = Vec::with_capacity(records.len());
                let mut off = 0;
                while off < records.len() {
                    let Ok(rec) = record::decode(records, off, &self.prefixes) else {
                        break;
                    };
                    if v.find(rec.key_hash, rec.prefix, rec.key, Lookup::Alone)
                        .is_none()
                    {
                        kept.extend_from_slice(&records[off..off + rec.len]);
                        appended += 1;
                    }
                    off += rec.len;
                }
                kept.into()
            },
            || {},
        )?;
        Ok((appended, full))
    }

    /// Appends what `records` makes of the caught-up view, under the lock, and publishes it;
    /// returns whether the log is full.
    pub(super) fn append_with<'r>(
        &self,
        records: impl FnOnce(&View) -> std::borrow::Cow<'r, [u8]>,
        published: impl FnOnce(),
    ) -> Result<bool> {
        self.follow_generation()?;
        let w = self.writer.lock();
        let l = self.lock()?;
        let mut v = self.locked_view()?;
        let bytes = records(&v);
        if bytes.is_empty() {
            published();
            return Ok(false);
        }
        let damaged = v.damaged_tail();
        if damaged {
            // Published records lost in a machine crash: new ones go to a new log (the
            // compaction seals this one), never over bytes other processes were told about.
            log::warn!(
                "{}: damaged past its intact {} bytes; sealing it",
                v.log.path().display(),
                v.scanned
            );
        }
        if damaged || v.scanned + bytes.len() as u64 > u64::from(u32::MAX) {
            self.compact_locked(&mut v, f64::NEG_INFINITY, false)?;
        }
        let off = v.scanned;
        let committed = off + bytes.len() as u64;
        let start = v.log_start;
        v.log.confirm_len(self.control.trims())?;
        v.log.append(start, off, &bytes, &self.mapped_writes)?;
        kill_point!("append.written");
        self.control.publish_committed(committed);
        kill_point!("append.published");
        v.scan_log(committed, |_| {})?;
        // What the log's map lets be borrowed never reaches past the published records (the
        // writer's mapping fills the space after them).
        debug_assert!(v.log.map().bytes().len() as u64 <= committed);
        published();
        let (full, wait) = self.wants_compaction(&v);
        drop((v, l, w));
        if wait {
            // The record is published; a failed compaction (disk full, say) leaves the old
            // generation in place and is tried again later.
            if let Err(e) = self.compact_when_full(true) {
                log::warn!("compaction failed, will retry: {e}");
            }
            return Ok(false);
        }
        Ok(full)
    }

    /// Whether the tail should go into a new index: it has `compact_records` records or
    /// `compact_bytes` bytes. This bounds what opening the cache scans. (Into a recent index,
    /// usually, when the cache is large: see [`Store::merge_at`].)
    pub(super) fn tail_is_full(&self, v: &View) -> bool {
        v.tail_records >= self.opts.compact_records
            || v.scanned.saturating_sub(v.log_start) >= self.compact_bytes()
    }

    /// The number of log records (the recent index's and the tail's) past which compaction
    /// merges them into a new full index instead of a new recent index: `compact_records`, or
    /// 1/32 of the full index's entries if that is more. Large caches then do not rewrite
    /// their whole index every few thousand writes, only a recent index of at most 1/32 of it.
    pub(super) fn merge_at(&self, v: &View) -> u64 {
        let indexed = v.index.as_ref().map_or(0, |i| i.body().entries.to_native());
        self.opts.compact_records.max(indexed / 32)
    }
}
