//! Rewriting segments whose records are mostly dead: the live records (and the removals still
//! needed) are copied into new segments, staged until the generation that names them is
//! published.

use std::collections::HashSet;

use super::{Lookup, Store, View};
use crate::error::{Error, IoContext, Result};
use crate::files::{self, Staged};
use crate::index::SegmentInfo;
use crate::record::Kind;
use crate::segment;

/// Largest segment written by compaction's rewrite; slot offsets are `u32`.
const GC_SEGMENT_MAX: u64 = 1 << 30;

/// Where compaction copies the records of the segments it rewrites: new segments of at most
/// `GC_SEGMENT_MAX` bytes, written in 8 MiB pieces and fsynced when full.
pub(super) struct Rewriter<'a> {
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
    pub(super) fn new(store: &'a Store, next_id: u32, id_limit: u32, nonce: u64) -> Self {
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
    pub(super) fn copy(&mut self, bytes: &[u8], live: bool) -> Result<(u32, u32)> {
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
    pub(super) fn copy_removals<'v>(
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
    pub(super) fn write_out(&mut self) -> Result<()> {
        if let (Some(written), Some(s)) = (self.written, self.staged.last()) {
            let at = written - self.buf.len() as u64;
            files::append_at(&s.file, &s.path, at, &self.buf)?;
            kill_point!("rewrite.written");
        }
        self.buf.clear();
        Ok(())
    }

    pub(super) fn finish_segment(&mut self) -> Result<()> {
        if self.written.is_some() {
            self.write_out()?;
            if let Some(s) = self.staged.last() {
                files::sync_file(&s.file, false).ctx("sync segment", &s.path)?;
                kill_point!("rewrite.synced");
            }
            self.written = None;
        }
        Ok(())
    }

    /// The segments written (durable, under their staged names), and the next free id.
    pub(super) fn finish(mut self) -> Result<(Vec<SegmentInfo>, Vec<Staged>, u32)> {
        self.finish_segment()?;
        let infos = std::mem::take(&mut self.infos);
        Ok((infos, std::mem::take(&mut self.staged), self.next_id))
    }
}
