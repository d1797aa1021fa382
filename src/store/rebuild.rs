//! Generations written whole: the first, empty one; a clear; a rebuild from the segments
//! when the index or control page is lost; and removing what no generation names.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};

use super::generation::new_log_id;
use super::{Store, View, key_eq};
use crate::error::{IoContext, Result};
use crate::files::{self, Dir};
use crate::index::{self, IndexBody, SegmentInfo, Slot};
use crate::record::{self, Kind};
use crate::segment;

impl Store {
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
        kill_point!("install.log_created");
        self.dir
            .write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        self.dir.sync()?;
        kill_point!("install.index_written");
        self.control
            .publish_generation(generation, 0, body.active_segment);
        kill_point!("install.published");
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

    /// Removes every entry: a new, empty generation is published, then the segments that no
    /// generation names any more are deleted. (Deleting them first would leave every other
    /// process appending to deleted files, its writes lost, if this one died in between.)
    /// On a disk too full for the new generation's few bytes, the segments go first after all.
    pub(crate) fn clear(&self) -> Result<()> {
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view()?;
        let generation = v.generation + 1;
        let segments = self.list_segments()?;
        let active = new_log_id(segments.last().copied())?;
        let empty = || {
            IndexBody::build(
                generation,
                self.seed(),
                generation,
                active,
                0,
                Vec::new(),
                Vec::new(),
            )
        };
        // Unmap the old segments too: a deleted file's space comes back when the last map goes.
        *v = Self::empty_view(&self.dir, &self.prefixes);
        if let Err(e) = self.install(&mut v, empty()?) {
            log::warn!("clearing with the segments deleted first: {e}");
            for id in segments {
                let p = self.dir.join(&segment::segment_name(id));
                fs::remove_file(&p).ctx("remove segment", &p)?;
            }
            self.install(&mut v, empty()?)?;
        }
        (self.on_change)(None);
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
                // A prefix whose number the table lacks, or a damaged packed key, cannot be
                // hashed: its records are lost.
                let Some(hash) = self.hash_of(rec).filter(|_| !rec.prefix.is_empty()) else {
                    return;
                };
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
                    rec.stored_key,
                );
                entries.push(Slot {
                    hash: index::slot_hash(hash),
                    seg: id,
                    off: at as u32,
                });
            }
        }
        files::append_at(&file, &path, 0, &buf)?;
        kill_point!("rebuild.written");
        files::sync_file(&file, false).ctx("sync segment", &path)?;
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
