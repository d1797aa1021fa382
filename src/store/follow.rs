//! Following the control page: mapping a new generation (its indexes, segments and log),
//! scanning the records other processes appended, and telling the RAM tier what changed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::{RwLock, RwLockWriteGuard};

use super::view::SegmentMaps;
use super::{Reader, Store, View, discard, is_newer, is_not_found, pack, rest_end};
use crate::control::State;
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Index, SegmentInfo};
use crate::segment;

impl Store {
    /// Maps generation `state.generation` and scans its log up to `state.committed`. When the
    /// view in `prev`, an older generation of the same epoch, has the same log, the records it
    /// has scanned past the new `log_start` come from its tail table instead (a compaction
    /// leaves the log going on, and what was appended while it ran is the new tail); `prev` is
    /// read-locked only to copy them.
    pub(super) fn load_view(&self, state: State, prev: Option<&RwLock<View>>) -> Result<View> {
        let path = self.dir.join(&index::index_name(state.generation));
        let top = Arc::new(Index::open(&path, state.generation, self.seed())?);
        let body = top.body();
        let base = body.base.to_native();
        let (index, recent) = if base == state.generation {
            (Arc::clone(&top), None)
        } else {
            let path = self.dir.join(&index::index_name(base));
            let full = Index::open(&path, base, self.seed())?;
            if full.body().base != base || full.body().epoch != body.epoch {
                return Err(Error::corrupt(
                    &path,
                    "not the full index its recent index names",
                ));
            }
            (Arc::new(full), Some(Arc::clone(&top)))
        };
        let mut infos: Vec<SegmentInfo> = body
            .segments
            .iter()
            .map(|s| SegmentInfo {
                id: s.id.to_native(),
                len: s.len.to_native(),
                live: s.live.to_native(),
                tombstones: s.tombstones.to_native(),
            })
            .collect();
        let active = body.active_segment.to_native();
        let log_start = body.log_start.to_native();
        let mut segments = SegmentMaps::default();
        // The log, when the index lists it too, is mapped below (`Log::map_head`, `Log::show`).
        for info in infos.iter_mut().filter(|i| i.id != active) {
            let p = self.dir.join(&segment::segment_name(info.id));
            let file = File::open(&p).ctx("open segment", &p)?;
            let map = segment::map_segment(&file, &p, info.len)?;
            if info.len == index::WHOLE_FILE {
                info.len = map.bytes().len() as u64;
            }
            segments.insert(info.id, Arc::new(map));
        }
        let log_path = self.dir.join(&segment::segment_name(active));
        let mut view = View::new(
            Arc::clone(&self.prefixes),
            state.generation,
            Some(index),
            recent,
            segments,
            infos,
            active,
            log_start,
            log_path,
        );
        self.ensure_log(&mut view, false)?;
        view.log.map_head(log_start)?;
        if !view.log.is_open() && state.committed > 0 {
            let missing = io::Error::from(io::ErrorKind::NotFound);
            return Err(Error::io("open segment", view.log.path(), missing));
        }
        let carried = prev.is_some_and(|p| view.carry_tail(&p.read()));
        if !carried {
            view.presize_tail(state.committed, self.opts.compact_records);
        }
        view.scan_log(state.committed, |_| {})?;
        Ok(view)
    }

    /// Loads the current generation, retrying while a compaction elsewhere moves files away;
    /// rebuilds it from the segments if it cannot be read. `locked`: the caller holds the
    /// writer mutex and the file lock (and no view guard).
    pub(super) fn reload(&self, locked: bool) -> Result<()> {
        let mut last = None;
        for _ in 0..64 {
            let state = self.control.state();
            match self.load_view(state, Some(&self.view)) {
                Ok(v) => {
                    self.install_view(v);
                    return Ok(());
                }
                Err(e)
                    if is_not_found(&e) && self.control.state().generation != state.generation => {}
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let e = last.unwrap_or_else(|| Error::corrupt(&self.ctl_path, "generation keeps changing"));
        if !self.is_writable() || is_newer(&e) {
            return Err(e);
        }
        log::warn!("{e}; rebuilding the index from the segments");
        let held = if locked {
            None
        } else {
            Some((self.writer.lock(), self.lock()?))
        };
        let state = self.control.state();
        match self.load_view(state, None) {
            Ok(v) => self.install_view(v),
            Err(_) => {
                let mut v = self.view.write();
                self.rebuild_locked(&mut v, "index unreadable")?;
                (self.on_change)(None);
            }
        }
        drop(held);
        Ok(())
    }

    /// Replaces the view unless it would go back: a thread that loaded an older state while
    /// another moved on must not undo that. Tells `on_change` (while no other thread can look
    /// anything up) which keys may have changed since the old view: those of the records it had
    /// not seen, or everything when that cannot be known.
    pub(super) fn install_view(&self, new: View) {
        let mut cur = self.view.write();
        let newer = cur.index.is_none()
            || new.generation > cur.generation
            || (new.generation == cur.generation && new.scanned >= cur.scanned);
        if !newer {
            return;
        }
        if cur.index.is_some() && new.generation == cur.generation {
            for (hash, _) in new
                .tail
                .iter()
                .filter(|(_, l)| u64::from(l.off) >= cur.scanned)
            {
                (self.on_change)(Some(hash));
            }
        } else if cur.index.is_some()
            && new.generation == cur.generation + 1
            && new.epoch() == cur.epoch()
            && cur.scan_rest(rest_end(&cur, &new), |hash| (self.on_change)(Some(hash)))
        {
            // The next generation of the same epoch: compaction moved records around, and
            // changed only what records of the old log (the rest of it, just scanned) and of
            // the new one say. When the log goes on, the new tail is part of the old log,
            // seen before or just now; a new log also has records appended after it began.
            if new.active != cur.active {
                for (hash, _) in new.tail.iter() {
                    (self.on_change)(Some(hash));
                }
            }
        } else {
            (self.on_change)(None);
        }
        let old = std::mem::replace(&mut *cur, new);
        drop(cur);
        discard(old);
    }

    /// Opens the active segment if the view has none (it did not exist yet when the view was
    /// loaded): without it the view could neither see others' records nor append after them.
    /// `create`: make it if it is missing (writers); otherwise a missing one stays `None`.
    pub(super) fn ensure_log(&self, v: &mut View, create: bool) -> Result<()> {
        if v.log.is_open() {
            return Ok(());
        }
        let file = if create {
            self.dir.open_log(v.active)?.0
        } else {
            let opened = OpenOptions::new()
                .read(true)
                .write(self.is_writable())
                .custom_flags(libc::O_NOFOLLOW)
                .open(v.log.path());
            match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("open segment", v.log.path(), e)),
            }
        };
        // Nothing visible until a scan of the committed records (`View::scan_log`).
        v.log.attach(file)
    }

    /// The view, caught up with the control page, held for writing. The caller holds the file
    /// lock, so nothing moves while the guard lives: appends go exactly at the committed length.
    pub(super) fn locked_view(&self) -> Result<RwLockWriteGuard<'_, View>> {
        loop {
            let state = self.control.state();
            let mut v = self.view.write();
            if v.generation == state.generation {
                self.ensure_log(&mut v, true)?;
                v.scan_log(state.committed, |h| (self.on_change)(Some(h)))?;
                return Ok(v);
            }
            drop(v);
            self.reload(true)?;
        }
    }

    /// Loads a new generation, if there is one, before the caller takes the write lock: loading
    /// it under the lock (mapping the index and segments, scanning the new log) would hold up
    /// every writer. (One published in between is loaded under the lock, as always.)
    pub(super) fn follow_generation(&self) -> Result<()> {
        if self.view.read().generation != self.control.state().generation {
            self.refresh()?;
        }
        Ok(())
    }

    /// Catches up with other processes: new records, or a new generation.
    pub(crate) fn refresh(&self) -> Result<()> {
        self.reader().map(drop)
    }

    /// The view, caught up with the control page, held for reading: one lock for the check and
    /// the lookups that follow. On error (the new state cannot be loaded) nothing is returned;
    /// [`Store::last_view`] still serves the last good one.
    pub(crate) fn reader(&self) -> Result<Reader<'_>> {
        let state = self.control.state();
        let v = self.view.read();
        if v.generation == state.generation && v.seen_committed == state.committed {
            if let Some(packed) = pack(state)
                && self.seen.load(Ordering::Relaxed) != packed
            {
                self.seen.store(packed, Ordering::Release);
            }
            return Ok(Reader(v));
        }
        drop(v);
        self.catch_up(state)?;
        Ok(Reader(self.view.read()))
    }

    /// Whether nothing changed since a read guard last found the view caught up: then the RAM
    /// tier holds no value older than the control page says.
    pub(crate) fn unchanged(&self) -> bool {
        pack(self.control.state()).is_some_and(|p| self.seen.load(Ordering::Acquire) == p)
    }

    /// The view as it is, without catching up.
    pub(crate) fn last_view(&self) -> Reader<'_> {
        Reader(self.view.read())
    }

    pub(super) fn catch_up(&self, state: State) -> Result<()> {
        let mut v = self.view.write();
        if v.generation != state.generation {
            drop(v);
            return self.reload(false);
        }
        if state.committed > v.scanned {
            self.ensure_log(&mut v, false)?;
        }
        v.scan_log(state.committed, |h| (self.on_change)(Some(h)))
    }
}
