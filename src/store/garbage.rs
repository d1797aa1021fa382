//! Deleting what no generation names: the files a new generation dropped (after a grace, a
//! segment's blocks freed first), and what dead writers and compactions left behind.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Store, View};
use crate::error::Result;
use crate::files;
use crate::index;
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
    /// lookup that began in the old generation is still reading them. The caller holds the
    /// compaction lock: no later plan sees a name whose deletion is pending, and reuses it.
    pub(super) fn retire(&self, garbage: Garbage) -> Result<()> {
        self.control.flush(&self.ctl_path)?;
        kill_point!("retire.flushed");
        for p in &garbage.keep_blocks {
            remove_file(p);
        }
        if garbage.files.iter().any(|p| is_segment(p)) {
            std::thread::sleep(PUNCH_GRACE);
        }
        remove_garbage(&garbage.files);
        Ok(())
    }
}

/// How long a segment the published generation dropped stays readable before its blocks are
/// freed: a lookup that loaded the old generation just before has long finished with it (it
/// takes microseconds), while a process that reads again catches up first and never looks at
/// the dropped file.
const PUNCH_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

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
    if let Err(e) = crate::sys::punch_hole(&file, len) {
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
