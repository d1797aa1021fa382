//! Compaction: merging the tail into a new index, rewriting mostly-dead segments, clearing,
//! and rebuilding from the segments when the index is lost.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::PathBuf;

use super::{OnChange, Store, View, key_eq};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, IndexBody, SegmentInfo, Slot};
use crate::keys::key_hash;
use crate::record::{self, Kind};
use crate::segment::{self, Dir};

/// Largest segment written by compaction's rewrite; slot offsets are `u32`.
const GC_SEGMENT_MAX: u64 = 1 << 30;

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

impl Store {
    /// Caller holds the writer mutex and the file lock, and has caught up.
    pub(super) fn compact_locked(
        &self,
        v: &mut View,
        now: f64,
        expire: bool,
    ) -> Result<CompactReport> {
        let Some(index) = v.index.as_ref() else {
            return Err(Error::Degraded {
                reason: "no index loaded".into(),
            });
        };
        if !index.verify_checksum() {
            let why = format!("{}: archive checksum mismatch", index.path.display());
            let generation = self.rebuild_locked(v, &why)?;
            return Ok(CompactReport {
                generation,
                ..CompactReport::default()
            });
        }
        let body = index.body();
        let mut superseded = vec![false; body.slots.len()];
        let mut entries: Vec<Slot> =
            Vec::with_capacity(body.entries.to_native() as usize + v.tail_records as usize);
        for (hash, l) in v.tail.iter() {
            let Some((_, rec)) = v.record(v.active, l.off) else {
                continue;
            };
            if let Some(p) = index.position(hash, |s| {
                v.record(s.seg.to_native(), s.off.to_native())
                    .is_some_and(|(_, r)| key_eq(&r, rec.prefix, rec.key))
            }) {
                superseded[p] = true;
            }
            if !l.tombstone() {
                entries.push(Slot {
                    hash: index::slot_hash(hash),
                    seg: v.active,
                    off: l.off,
                    len: l.len(),
                });
            }
        }
        for (i, s) in body.slots.iter().enumerate() {
            if s.seg != index::EMPTY && !superseded[i] {
                entries.push(s.to_slot());
            }
        }
        let before = entries.len();
        if expire {
            // Slots hold no timestamps: records are read, here only (clear_expired), in file
            // order. An unreadable record is left to `verify`; it is never served anyway.
            let ttl = self.opts.ttl_secs;
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            entries.retain(|s| {
                v.record(s.seg, s.off)
                    .is_none_or(|(_, r)| now - r.timestamp <= ttl)
            });
        }
        let expired = (before - entries.len()) as u64;

        // The log's own removals are the newest records of their keys: all are kept.
        let log_tombstones = v
            .tail
            .iter()
            .filter(|(_, l)| l.tombstone())
            .map(|(_, l)| u64::from(l.len()))
            .sum();
        let mut infos = v.infos.clone();
        infos.push(SegmentInfo {
            id: v.active,
            len: v.scanned,
            live: 0,
            tombstones: log_tombstones,
        });
        for i in &mut infos {
            i.live = 0;
        }
        // Few segments, and runs of entries in one: a linear search from the last one found.
        let mut at = 0;
        for e in &entries {
            if infos[at].id != e.seg {
                at = infos.iter().position(|s| s.id == e.seg).unwrap_or(at);
            }
            if infos[at].id == e.seg {
                infos[at].live += u64::from(e.len);
            }
        }
        let next_id = infos.iter().map(|s| s.id).max().unwrap_or(0).max(v.active) + 1;
        let rewrite: HashSet<u32> = infos
            .iter()
            .filter(|s| {
                let dead = s.len.saturating_sub(s.live + s.tombstones);
                let worth = if expire {
                    // clear_expired promises the space back: any segment a quarter dead, and
                    // those holding only removals (the ones still needed move, the rest go).
                    (dead > 0 && dead * 4 >= s.len) || s.live == 0
                } else {
                    // Routine compaction rewrites only big, mostly dead segments.
                    dead > 0 && dead >= self.opts.gc_min_dead && dead >= s.live
                };
                s.live + s.tombstones > 0 && worth
            })
            .map(|s| s.id)
            .collect();
        let mut out = Rewriter::new(self, next_id);
        if !rewrite.is_empty() {
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            for e in entries.iter_mut().filter(|e| rewrite.contains(&e.seg)) {
                let Some(src) = v.map_of(e.seg) else { continue };
                let Some(bytes) = src.bytes().get(e.off as usize..(e.off + e.len) as usize) else {
                    continue;
                };
                (e.seg, e.off) = out.copy(bytes, true)?;
            }
            let mut moved = HashSet::new();
            for s in infos.iter().filter(|s| rewrite.contains(&s.id)) {
                out.copy_removals(v, s, &mut moved)?;
            }
        }
        let (new_infos, next_id) = out.finish()?;
        let kept: Vec<SegmentInfo> = infos
            .iter()
            .filter(|s| s.live + s.tombstones > 0 && !rewrite.contains(&s.id))
            .copied()
            .chain(new_infos)
            .collect();
        let referenced: HashSet<u32> = kept.iter().map(|s| s.id).collect();
        let freed: u64 = infos
            .iter()
            .filter(|s| !referenced.contains(&s.id))
            .map(|s| s.len)
            .sum();
        if let (Some(log), true) = (&v.log, referenced.contains(&v.active)) {
            // Seal: trim the preallocated, never-published tail (no process reads past the
            // published length), then make the segment durable.
            log.set_len(v.scanned).ctx("seal segment", &v.log_path)?;
            log.sync_data().ctx("sync segment", &v.log_path)?;
        }
        let generation = v.generation + 1;
        let new_active = next_id;
        let body = IndexBody::build(
            generation,
            self.seed(),
            body.epoch.to_native(),
            new_active,
            kept,
            entries,
        );
        self.install(v, body)?;
        Ok(CompactReport {
            expired,
            bytes_freed: freed,
            segments_rewritten: rewrite.len() as u64,
            generation,
        })
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
        self.control.publish_generation(generation);
        self.control.flush(&self.ctl_path)?;
        for id in self.list_segments()? {
            if !referenced.contains(&id) {
                let p = self.dir.join(&segment::segment_name(id));
                if let Err(e) = fs::remove_file(&p) {
                    log::warn!("cannot remove {}: {e}", p.display());
                }
            }
        }
        for e in fs::read_dir(&self.dir.path)
            .ctx("list directory", &self.dir.path)?
            .flatten()
        {
            let name = e.file_name();
            let Some(g) = name.to_str().and_then(index::parse_index_name) else {
                continue;
            };
            if g != generation {
                let _ = fs::remove_file(e.path());
            }
        }
        *v = self.load_view(self.control.state())?;
        Ok(())
    }

    /// The first generation of a new cache: an empty index and its empty active segment.
    pub(super) fn write_empty_generation(dir: &Dir, seed: u64, generation: u64) -> Result<()> {
        let body = IndexBody::build(generation, seed, generation, 0, Vec::new(), Vec::new());
        dir.open_log(0)?;
        dir.write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        dir.sync()
    }

    /// Removes every entry: a new, empty generation; all segments deleted.
    pub(crate) fn clear(&self, on_change: OnChange<'_>) -> Result<()> {
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        let generation = v.generation + 1;
        let segments = self.list_segments()?;
        let active = segments.last().map_or(0, |id| id + 1);
        // Segments go first, so that clearing works on a full disk. A crash in between leaves
        // an index whose segments are gone, which open rebuilds (from nothing: cleared).
        for id in segments {
            let p = self.dir.join(&segment::segment_name(id));
            fs::remove_file(&p).ctx("remove segment", &p)?;
        }
        // Unmap them too: a deleted file's space comes back when the last map goes.
        *v = Self::empty_view(&self.dir);
        let body = IndexBody::build(
            generation,
            self.seed(),
            generation,
            active,
            Vec::new(),
            Vec::new(),
        );
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
        let ids = self.list_segments()?;
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
            segment::scan(map.bytes(), 0, |off, rec| {
                let Ok(prefix) = std::str::from_utf8(rec.prefix) else {
                    return;
                };
                let hash = key_hash(self.seed(), prefix, rec.key);
                let locs = latest.entry(hash).or_default();
                let same = locs.iter().position(|&(m2, o2)| {
                    record::decode(maps[m2].bytes(), o2)
                        .is_ok_and(|r| key_eq(&r, rec.prefix, rec.key))
                });
                match same {
                    Some(i) => locs[i] = (m, off),
                    None => locs.push((m, off)),
                }
            });
        }
        let id = ids.last().map_or(0, |i| i + 1);
        let (file, path) = self.dir.open_log(id)?;
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        for (hash, locs) in latest {
            for (m, off) in locs {
                let Ok(rec) = record::decode(maps[m].bytes(), off) else {
                    continue;
                };
                if rec.kind == Kind::Tombstone {
                    continue;
                }
                let Ok(prefix) = std::str::from_utf8(rec.prefix) else {
                    continue;
                };
                let at = buf.len();
                record::encode(
                    &mut buf,
                    rec.kind,
                    hash,
                    rec.timestamp,
                    rec.value,
                    prefix,
                    rec.key,
                );
                entries.push(Slot {
                    hash: index::slot_hash(hash),
                    seg: id,
                    off: at as u32,
                    len: (buf.len() - at) as u32,
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
                id + 1,
                segments,
                entries,
            ),
        )?;
        Ok(generation)
    }
}

/// Where compaction copies the records of the segments it rewrites: new segments of at most
/// `GC_SEGMENT_MAX` bytes, written in 8 MiB pieces and fsynced when full.
struct Rewriter<'a> {
    store: &'a Store,
    /// The segment being written: file, path, bytes so far.
    out: Option<(File, PathBuf, u64)>,
    buf: Vec<u8>,
    infos: Vec<SegmentInfo>,
    next_id: u32,
}

impl<'a> Rewriter<'a> {
    fn new(store: &'a Store, next_id: u32) -> Self {
        Self {
            store,
            out: None,
            buf: Vec::new(),
            infos: Vec::new(),
            next_id,
        }
    }

    /// Copies one record: a live entry's (an index slot will point at it) or a removal kept.
    /// Returns where it went.
    fn copy(&mut self, bytes: &[u8], live: bool) -> Result<(u32, u32)> {
        let full = |o: &(File, PathBuf, u64)| o.2 + bytes.len() as u64 > GC_SEGMENT_MAX;
        if self.out.as_ref().is_none_or(full) {
            self.finish_segment()?;
            let (file, path) = self.store.dir.open_log(self.next_id)?;
            self.infos.push(SegmentInfo {
                id: self.next_id,
                len: 0,
                live: 0,
                tombstones: 0,
            });
            self.next_id += 1;
            self.out = Some((file, path, 0));
        }
        let (Some(o), Some(info)) = (self.out.as_mut(), self.infos.last_mut()) else {
            return Err(Error::Degraded {
                reason: "no segment to rewrite into".into(),
            });
        };
        let at = (info.id, o.2 as u32);
        self.buf.extend_from_slice(bytes);
        o.2 += bytes.len() as u64;
        info.len = o.2;
        if live {
            info.live += bytes.len() as u64;
        } else {
            info.tombstones += bytes.len() as u64;
        }
        if self.buf.len() >= 8 << 20 {
            write_out(o, &mut self.buf)?;
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
        segment::scan(valid, 0, |off, rec| {
            if rec.kind == Kind::Tombstone {
                found.push((off, rec.len, rec.key_hash, rec.prefix, rec.key));
            }
        });
        for (off, len, hash, prefix, key) in found {
            let absent = v
                .find(hash, prefix, key)
                .is_none_or(|(_, r)| r.kind == Kind::Tombstone);
            if absent && moved.insert((hash, prefix, key)) {
                self.copy(&valid[off..off + len], false)?;
            }
        }
        Ok(())
    }

    fn finish_segment(&mut self) -> Result<()> {
        if let Some(o) = self.out.take() {
            write_out(&o, &mut self.buf)?;
            o.0.sync_all().ctx("sync segment", &o.1)?;
        }
        Ok(())
    }

    /// The segments written, and the next free segment id.
    fn finish(mut self) -> Result<(Vec<SegmentInfo>, u32)> {
        self.finish_segment()?;
        Ok((self.infos, self.next_id))
    }
}

/// Writes the buffered end of the segment being rewritten (it ends at `o.2`).
fn write_out(o: &(File, PathBuf, u64), buf: &mut Vec<u8>) -> Result<()> {
    segment::append_at(&o.0, &o.1, o.2 - buf.len() as u64, buf)?;
    buf.clear();
    Ok(())
}
