//! Generations written whole: the first, empty one; a clear; a rebuild from the segments
//! when the index or control page is lost; and removing what no generation names.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::generation::new_log_id;
use super::{Store, View, key_eq};
use crate::error::{IoContext, Result};
use crate::files::{self, Dir};
use crate::index::{self, IndexBody, SegmentInfo, Slot};
use crate::keys::key_hash;
use crate::record::{self, Kind};
use crate::segment;

impl Store {
    /// Removes what writers that died left behind: staged files, segments and indexes the
    /// current generation does not name (among them segments newer than its log, written by a
    /// commit that never published them: a rebuild would replay those over newer records).
    /// Caller holds the compaction lock and the write lock, so no compaction is under way.
    pub(super) fn remove_leftovers(&self, v: &View) {
        let named: HashSet<u32> = v.infos.iter().map(|s| s.id).chain([v.active]).collect();
        self.remove_unnamed(&named, &v.index_generations(), true);
    }

    /// Deletes the segments not in `named`, the indexes of other generations than those of
    /// `indexes`, and, with `staged`, compaction's staged files and whole files being written
    /// (only when no compaction can be under way and the caller holds the write lock).
    pub(super) fn remove_unnamed(&self, named: &HashSet<u32>, indexes: &[u64], staged: bool) {
        let Ok(entries) = fs::read_dir(&self.dir.path) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let stale = (staged && (files::is_staged(name) || files::is_new_file(name)))
                || segment::parse_segment_name(name).is_some_and(|id| !named.contains(&id))
                || index::parse_index_name(name).is_some_and(|g| !indexes.contains(&g));
            if stale {
                log::debug!("removing {name}: no longer part of the cache");
                remove_garbage(&[e.path()]);
            }
        }
    }

    /// Makes the published generation durable, then deletes the files of the old one (the
    /// segments' blocks first: see [`punch_segment`]), after [`PUNCH_GRACE`], so that no
    /// lookup that began in the old generation is still reading them.
    /// With `later`, on a thread of its own where one can be started (if the process ends
    /// first, the next compaction deletes what is left: no generation names it).
    pub(super) fn retire(&self, garbage: Garbage, later: bool) -> Result<()> {
        self.control.flush(&self.ctl_path)?;
        kill_point!("retire.flushed");
        for p in &garbage.keep_blocks {
            remove_file(p);
        }
        if !garbage.files.iter().any(|p| is_segment(p)) {
            remove_garbage(&garbage.files);
            return Ok(());
        }
        let files = garbage.files;
        let reap = move || {
            std::thread::sleep(PUNCH_GRACE);
            remove_garbage(&files);
        };
        if later {
            if let Err(e) = std::thread::Builder::new()
                .name("tokcache-reaper".into())
                .spawn(reap)
            {
                log::debug!("cannot start a thread to delete dropped segments: {e}");
            }
        } else {
            reap();
        }
        Ok(())
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

/// How long a segment the published generation dropped stays readable before its blocks are
/// freed: a lookup that loaded the old generation just before has long finished with it (it
/// takes microseconds), while a process that reads again catches up first and never looks at
/// the dropped file.
const PUNCH_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

fn is_segment(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| segment::parse_segment_name(n).is_some())
}

/// Frees the blocks of a segment about to be deleted: a process that still maps it (an idle
/// worker of the pool that has not looked since) would otherwise keep them allocated until it
/// does, past any disk bound. It then reads zeros there, which fail every record's checks: a
/// miss, and it catches up on its next lookup anyway. Best effort (not every file system
/// punches holes).
fn punch_segment(path: &Path) {
    if !is_segment(path) {
        return;
    }
    let Ok(file) = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if let Err(e) = crate::map::punch_hole(&file, len) {
        log::debug!("cannot free the blocks of {}: {e}", path.display());
    }
    kill_point!("garbage.punched");
}

/// The files a new generation no longer names, for [`Store::retire`].
#[derive(Debug, Default)]
pub(super) struct Garbage {
    /// Deleted after a grace, a segment's blocks freed first ([`punch_segment`]).
    pub files: Vec<PathBuf>,
    /// Deleted at once, their blocks left to the last process that maps them.
    pub keep_blocks: Vec<PathBuf>,
}

/// Deletes files the cache no longer names (a segment's blocks freed first: see
/// [`punch_segment`]).
pub(super) fn remove_garbage(paths: &[PathBuf]) {
    for p in paths {
        punch_segment(p);
        remove_file(p);
    }
}

fn remove_file(p: &Path) {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("cannot remove {}: {e}", p.display());
        }
        _ => {}
    }
    kill_point!("garbage.removed_one");
}
