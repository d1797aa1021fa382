//! The disk tier: composes the control page, the lock, the index and the segments into one
//! shared store. Every process follows the control page: a new committed length means records to
//! scan into its tail table, a new generation means a new index to map.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::control::{self, Control, State};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Index, IndexBody, SegmentInfo, Slot};
use crate::keys::{HashKeyed, key_hash};
use crate::lock::LockFile;
use crate::map::ReadMap;
use crate::record::{self, Kind, RecordRef};
use crate::segment::{self, Dir};

/// Largest segment written by compaction's rewrite; slot offsets are `u32`.
const GC_SEGMENT_MAX: u64 = 1 << 30;

/// Tunables of the disk tier (the builder documents them).
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub mode: u32,
    pub compact_records: u64,
    pub compact_bytes: u64,
    /// A segment is rewritten when at least this many of its bytes are dead and they are at
    /// least half of it.
    pub gc_min_dead: u64,
    pub ttl_secs: f64,
}

/// A record of the active log, as the tail table keeps it.
#[derive(Clone, Copy, Debug)]
struct TailLoc {
    off: u32,
    len: u32,
    ts: f64,
    tombstone: bool,
}

/// What a process has mapped of one generation, plus the tail it has scanned.
struct View {
    generation: u64,
    /// `None` only before the first load.
    index: Option<Index>,
    segments: HashMap<u32, Arc<ReadMap>>,
    infos: Vec<SegmentInfo>,
    active: u32,
    log: Option<File>,
    log_path: PathBuf,
    log_map: Arc<ReadMap>,
    /// Length of the log file (preallocated past the committed length).
    log_len: u64,
    scanned: u64,
    seen_committed: u64,
    tail: HashKeyed<Vec<TailLoc>>,
    tail_records: u64,
    /// Entries the tail adds to (or removes from) the index's count.
    delta: i64,
}

fn key_eq(rec: &RecordRef<'_>, prefix: &[u8], key: &[u8]) -> bool {
    rec.key == key && rec.prefix == prefix
}

impl View {
    fn map_of(&self, seg: u32) -> Option<&Arc<ReadMap>> {
        if seg == self.active {
            Some(&self.log_map)
        } else {
            self.segments.get(&seg)
        }
    }

    fn record(&self, seg: u32, off: u32) -> Option<(&Arc<ReadMap>, RecordRef<'_>)> {
        let map = self.map_of(seg)?;
        let rec = record::decode(map.bytes(), off as usize).ok()?;
        Some((map, rec))
    }

    /// The newest record of this key: from the tail, else from the index. Tombstones included.
    fn find(&self, hash: u64, prefix: &[u8], key: &[u8]) -> Option<(&Arc<ReadMap>, RecordRef<'_>)> {
        if let Some(locs) = self.tail.get(&hash) {
            for l in locs {
                if let Some((map, rec)) = self.record(self.active, l.off)
                    && key_eq(&rec, prefix, key)
                {
                    return Some((map, rec));
                }
            }
        }
        self.index.as_ref()?.probe(hash, |s| {
            let (map, rec) = self.record(s.seg.to_native(), s.off.to_native())?;
            (rec.key_hash == hash && key_eq(&rec, prefix, key)).then_some((map, rec))
        })
    }

    fn in_index(&self, hash: u64, prefix: &[u8], key: &[u8]) -> bool {
        self.index
            .as_ref()
            .and_then(|i| {
                i.probe(hash, |s| {
                    let (_, rec) = self.record(s.seg.to_native(), s.off.to_native())?;
                    key_eq(&rec, prefix, key).then_some(())
                })
            })
            .is_some()
    }

    /// Maps the log up to `committed` and adds its new records to the tail table. Returns the
    /// hashes of the keys that changed.
    fn scan_log(&mut self, committed: u64) -> Result<Vec<u64>> {
        self.seen_committed = committed;
        if committed <= self.scanned {
            return Ok(Vec::new());
        }
        if (self.log_map.bytes().len() as u64) < committed {
            let Some(file) = &self.log else {
                return Ok(Vec::new());
            };
            let len = file.metadata().ctx("stat segment", &self.log_path)?.len();
            self.log_len = len;
            self.log_map = Arc::new(segment::map_segment(file, &self.log_path, len)?);
        }
        let map = Arc::clone(&self.log_map);
        let end = usize::try_from(committed)
            .unwrap_or(usize::MAX)
            .min(map.bytes().len());
        let mut records = Vec::new();
        let (stop, why) = segment::scan(&map.bytes()[..end], self.scanned as usize, |off, rec| {
            records.push((off, *rec))
        });
        if let Some(why) = why
            && (stop as u64) < committed
        {
            log::warn!(
                "{}: {why} at offset {stop}; later records are ignored",
                self.log_path.display()
            );
        }
        let mut changed = Vec::with_capacity(records.len());
        for (off, rec) in records {
            self.add_to_tail(off, &rec);
            changed.push(rec.key_hash);
        }
        self.scanned = stop as u64;
        Ok(changed)
    }

    fn add_to_tail(&mut self, off: usize, rec: &RecordRef<'_>) {
        let hash = rec.key_hash;
        let log = self.log_map.bytes();
        let existing = self.tail.get(&hash).and_then(|locs| {
            locs.iter().position(|l| {
                record::decode(log, l.off as usize).is_ok_and(|r| key_eq(&r, rec.prefix, rec.key))
            })
        });
        let before = match existing {
            Some(i) => !self.tail[&hash][i].tombstone,
            None => self.in_index(hash, rec.prefix, rec.key),
        };
        let loc = TailLoc {
            off: off as u32,
            len: rec.len as u32,
            ts: rec.timestamp,
            tombstone: rec.kind == Kind::Tombstone,
        };
        let locs = self.tail.entry(hash).or_default();
        match existing {
            Some(i) => locs[i] = loc,
            None => locs.push(loc),
        }
        self.tail_records += 1;
        self.delta += i64::from(!loc.tombstone) - i64::from(before);
    }

    fn entries(&self) -> u64 {
        let indexed = self
            .index
            .as_ref()
            .map_or(0, |i| i.body().entries.to_native());
        (indexed as i64 + self.delta).max(0) as u64
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

/// Disk-tier numbers for stats.
#[derive(Clone, Debug, Default)]
pub(crate) struct DiskStats {
    pub entries: u64,
    pub live_bytes: u64,
    pub disk_bytes: u64,
    pub generation: u64,
    pub tail_records: u64,
}

/// Called with the hash of each key another process changed, or `None` when everything may
/// have changed (a new generation).
pub(crate) type OnChange<'a> = &'a dyn Fn(Option<u64>);

pub(crate) struct Store {
    dir: Dir,
    opts: Options,
    control: Control,
    ctl_path: PathBuf,
    lock: Option<LockFile>,
    writer: Mutex<()>,
    view: RwLock<View>,
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

impl Store {
    /// Opens the store in `dir`, creating it if needed. `migrate` is called once, under the
    /// write lock, when the store is created, to bring in entries of the original format.
    pub(crate) fn open(
        dir: Dir,
        opts: Options,
        migrate: &dyn Fn(&Store) -> Result<()>,
    ) -> Result<Self> {
        let lock = match LockFile::open(&dir.path, opts.mode) {
            Ok(l) => Some(l),
            Err(Error::Io { ref source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let ctl_path = dir.join(control::FILE_NAME);
        let writable = lock.is_some();
        let (control, created) = match Control::open(&ctl_path, writable) {
            Ok(c) => (c, false),
            Err(e) if lock.is_none() => return Err(e),
            Err(first) => {
                let held = lock.as_ref().map(LockFile::exclusive).transpose()?;
                match Control::open(&ctl_path, true) {
                    Ok(c) => (c, false),
                    Err(_) => {
                        if !is_not_found(&first) {
                            log::warn!("{first}; rebuilding the control page");
                        }
                        let generation = Self::highest_index_generation(&dir)?.map_or(0, |g| g + 1);
                        Control::create(&dir, random_seed(), generation)?;
                        drop(held);
                        (Control::open(&ctl_path, true)?, true)
                    }
                }
            }
        };
        let placeholder = Self::empty_view(&dir);
        let store = Self {
            dir,
            opts,
            control,
            ctl_path,
            lock,
            writer: Mutex::new(()),
            view: RwLock::new(placeholder),
        };
        if created {
            let _w = store.writer.lock();
            let _l = store.lock()?;
            if store.list_segments()?.is_empty() {
                store.write_empty_generation(store.control.state().generation, 0)?;
                store.reload(&|_| {}, true)?;
                drop(_l);
                drop(_w);
                migrate(&store)?;
            } else {
                store.rebuild_locked(
                    &mut store.view.write(),
                    "control page was missing or damaged",
                )?;
            }
        } else {
            store.reload(&|_| {}, false)?;
        }
        Ok(store)
    }

    fn lock(&self) -> Result<crate::lock::Locked<'_>> {
        match &self.lock {
            Some(l) => l.exclusive(),
            None => Err(Error::Degraded {
                reason: format!("{} is read-only", self.dir.path.display()),
            }),
        }
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.lock.is_some()
    }

    pub(crate) fn seed(&self) -> u64 {
        self.control.seed()
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    fn list_segments(&self) -> Result<Vec<u32>> {
        segment::list_segments(&self.dir.path)
    }

    fn highest_index_generation(dir: &Dir) -> Result<Option<u64>> {
        let mut best = None;
        for e in fs::read_dir(&dir.path).ctx("list directory", &dir.path)? {
            let e = e.ctx("list directory", &dir.path)?;
            if let Some(g) = e.file_name().to_str().and_then(index::parse_index_name) {
                best = best.max(Some(g));
            }
        }
        Ok(best)
    }

    /// A view with nothing in it, used until the first real load.
    fn empty_view(dir: &Dir) -> View {
        View {
            generation: u64::MAX,
            index: None,
            segments: HashMap::new(),
            infos: Vec::new(),
            active: u32::MAX,
            log: None,
            log_path: dir.join("none"),
            log_map: Arc::new(ReadMap::empty()),
            log_len: 0,
            scanned: 0,
            seen_committed: 0,
            tail: HashKeyed::default(),
            tail_records: 0,
            delta: 0,
        }
    }

    /// Maps generation `state.generation` and scans its log up to `state.committed`.
    fn load_view(&self, state: State) -> Result<View> {
        let path = self.dir.join(&index::index_name(state.generation));
        let index = Index::open(&path, state.generation, self.seed())?;
        let body = index.body();
        let infos: Vec<SegmentInfo> = body
            .segments
            .iter()
            .map(|s| SegmentInfo {
                id: s.id.to_native(),
                len: s.len.to_native(),
                live: s.live.to_native(),
            })
            .collect();
        let active = body.active_segment.to_native();
        let mut segments = HashMap::with_capacity(infos.len());
        for info in &infos {
            let p = self.dir.join(&segment::segment_name(info.id));
            let file = File::open(&p).ctx("open segment", &p)?;
            segments.insert(
                info.id,
                Arc::new(segment::map_segment(&file, &p, info.len)?),
            );
        }
        let log_path = self.dir.join(&segment::segment_name(active));
        let log = match OpenOptions::new()
            .read(true)
            .write(self.is_writable())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)
        {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && state.committed == 0 => None,
            Err(e) => return Err(Error::io("open segment", &log_path, e)),
        };
        let log_len = match &log {
            Some(f) => f.metadata().ctx("stat segment", &log_path)?.len(),
            None => 0,
        };
        let log_map = match &log {
            Some(f) => segment::map_segment(f, &log_path, log_len)?,
            None => ReadMap::empty(),
        };
        let mut view = View {
            generation: state.generation,
            index: Some(index),
            segments,
            infos,
            active,
            log,
            log_path,
            log_map: Arc::new(log_map),
            log_len,
            scanned: 0,
            seen_committed: 0,
            tail: HashKeyed::default(),
            tail_records: 0,
            delta: 0,
        };
        view.scan_log(state.committed)?;
        Ok(view)
    }

    /// Loads the current generation, retrying while a compaction elsewhere moves files away;
    /// rebuilds it from the segments if it cannot be read. `locked`: the caller holds the
    /// writer mutex and the file lock (and no view guard).
    fn reload(&self, on_change: OnChange<'_>, locked: bool) -> Result<()> {
        let mut last = None;
        for _ in 0..64 {
            let state = self.control.state();
            match self.load_view(state) {
                Ok(v) => {
                    self.install_view(v);
                    on_change(None);
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
        if !self.is_writable() {
            return Err(e);
        }
        log::warn!("{e}; rebuilding the index from the segments");
        let held = if locked {
            None
        } else {
            Some((self.writer.lock(), self.lock()?))
        };
        let state = self.control.state();
        match self.load_view(state) {
            Ok(v) => self.install_view(v),
            Err(_) => {
                self.rebuild_locked(&mut self.view.write(), "index unreadable")?;
            }
        }
        drop(held);
        on_change(None);
        Ok(())
    }

    /// Replaces the view unless it would go back: a thread that loaded an older state while
    /// another moved on must not undo that.
    fn install_view(&self, new: View) {
        let mut cur = self.view.write();
        let newer = cur.index.is_none()
            || new.generation > cur.generation
            || (new.generation == cur.generation && new.scanned >= cur.scanned);
        if newer {
            *cur = new;
        }
    }

    /// The view, caught up with the control page, held for writing. The caller holds the file
    /// lock, so nothing moves while the guard lives: appends go exactly at the committed length.
    fn locked_view(&self, on_change: OnChange<'_>) -> Result<RwLockWriteGuard<'_, View>> {
        loop {
            let state = self.control.state();
            let mut v = self.view.write();
            if v.generation == state.generation {
                for h in v.scan_log(state.committed)? {
                    on_change(Some(h));
                }
                return Ok(v);
            }
            drop(v);
            self.reload(on_change, true)?;
        }
    }

    /// Catches up with other processes: new records, or a new generation.
    pub(crate) fn refresh(&self, on_change: OnChange<'_>) -> Result<()> {
        let state = self.control.state();
        {
            let v = self.view.read();
            if v.generation == state.generation && v.seen_committed == state.committed {
                return Ok(());
            }
        }
        self.catch_up(state, on_change)
    }

    fn catch_up(&self, state: State, on_change: OnChange<'_>) -> Result<()> {
        let mut v = self.view.write();
        if v.generation != state.generation {
            drop(v);
            return self.reload(on_change, false);
        }
        for h in v.scan_log(state.committed)? {
            on_change(Some(h));
        }
        Ok(())
    }

    /// Runs `f` on the newest live record of the key, if any (tombstones are misses).
    pub(crate) fn get<R>(
        &self,
        hash: u64,
        prefix: &str,
        key: &str,
        f: impl FnOnce(&Arc<ReadMap>, &RecordRef<'_>) -> R,
    ) -> Option<R> {
        let v = self.view.read();
        let (map, rec) = v.find(hash, prefix.as_bytes(), key.as_bytes())?;
        (rec.kind != Kind::Tombstone).then(|| f(map, &rec))
    }

    /// Appends encoded records (under the lock), publishes them, and compacts if the log is
    /// past its thresholds. `now` is for compaction's expiry.
    pub(crate) fn append(&self, bytes: &[u8], now: f64, on_change: OnChange<'_>) -> Result<()> {
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        if v.scanned + bytes.len() as u64 > u64::from(u32::MAX) {
            self.compact_locked(&mut v, now, false)?;
            on_change(None);
        }
        if v.scanned < v.seen_committed {
            // A damaged tail (after a machine crash): new records go after the intact part.
            log::warn!(
                "{}: truncating the committed length to the intact {} bytes",
                v.log_path.display(),
                v.scanned
            );
        }
        if v.log.is_none() {
            let (file, _) = self.dir.open_log(v.active)?;
            v.log = Some(file);
        }
        let off = v.scanned;
        let view = &mut *v;
        if let Some(file) = &view.log {
            view.log_len =
                segment::reserve(file, &view.log_path, view.log_len, off + bytes.len() as u64)?;
            segment::append_at(file, &view.log_path, off, bytes)?;
        }
        let committed = off + bytes.len() as u64;
        self.control.publish_committed(committed);
        v.scan_log(committed)?;
        if v.tail_records >= self.opts.compact_records || v.scanned >= self.opts.compact_bytes {
            // The record is published; a failed compaction (disk full, say) leaves the old
            // generation in place and is retried on the next append.
            if let Err(e) = self.compact_locked(&mut v, now, false) {
                log::warn!("compaction failed, will retry: {e}");
            }
            on_change(None);
        }
        Ok(())
    }

    /// Merges the tail into a new index, drops expired entries if `expire`, rewrites segments
    /// that are mostly dead.
    pub(crate) fn compact(
        &self,
        now: f64,
        expire: bool,
        on_change: OnChange<'_>,
    ) -> Result<CompactReport> {
        let _w = self.writer.lock();
        let _l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        let report =
            self.compact_locked(&mut v, if expire { now } else { f64::NEG_INFINITY }, expire)?;
        on_change(None);
        Ok(report)
    }

    /// Caller holds the writer mutex and the file lock, and has caught up.
    fn compact_locked(&self, v: &mut View, now: f64, expire: bool) -> Result<CompactReport> {
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
            Vec::with_capacity(body.entries.to_native() as usize + v.tail.len());
        for (&hash, locs) in &v.tail {
            for l in locs {
                let Some((_, rec)) = v.record(v.active, l.off) else {
                    continue;
                };
                if let Some(p) = index.position(hash, |s| {
                    v.record(s.seg.to_native(), s.off.to_native())
                        .is_some_and(|(_, r)| key_eq(&r, rec.prefix, rec.key))
                }) {
                    superseded[p] = true;
                }
                if !l.tombstone {
                    entries.push(Slot {
                        hash,
                        seg: v.active,
                        off: l.off,
                        len: l.len,
                        ts: l.ts.clamp(0.0, f64::from(u32::MAX)) as u32,
                    });
                }
            }
        }
        for (i, s) in body.slots.iter().enumerate() {
            if s.seg != index::EMPTY && !superseded[i] {
                entries.push(s.to_slot());
            }
        }
        let before = entries.len();
        if expire {
            let ttl = self.opts.ttl_secs;
            entries.retain(|s| now - (f64::from(s.ts) + 1.0) <= ttl);
        }
        let expired = (before - entries.len()) as u64;

        let mut infos = v.infos.clone();
        infos.push(SegmentInfo {
            id: v.active,
            len: v.scanned,
            live: 0,
        });
        for i in &mut infos {
            i.live = 0;
        }
        let pos: HashMap<u32, usize> = infos.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        for e in &entries {
            infos[pos[&e.seg]].live += u64::from(e.len);
        }
        let mut next_id = infos.iter().map(|s| s.id).max().unwrap_or(0).max(v.active) + 1;
        let rewrite: HashSet<u32> = infos
            .iter()
            .filter(|s| {
                let dead = s.len - s.live.min(s.len);
                // clear_expired promises the space back: any segment a quarter dead. Routine
                // compaction rewrites only big, mostly dead segments.
                let worth = if expire {
                    dead * 4 >= s.len
                } else {
                    dead >= self.opts.gc_min_dead && dead >= s.live
                };
                s.live > 0 && dead > 0 && worth
            })
            .map(|s| s.id)
            .collect();
        let mut new_infos: Vec<SegmentInfo> = Vec::new();
        if !rewrite.is_empty() {
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            let mut out: Option<(File, PathBuf, u64)> = None;
            let mut buf = Vec::new();
            for e in entries.iter_mut().filter(|e| rewrite.contains(&e.seg)) {
                let Some(src) = v.map_of(e.seg) else { continue };
                let Some(bytes) = src.bytes().get(e.off as usize..(e.off + e.len) as usize) else {
                    continue;
                };
                if out
                    .as_ref()
                    .is_none_or(|o| o.2 + bytes.len() as u64 > GC_SEGMENT_MAX)
                {
                    if let Some(o) = out.take() {
                        finish_segment(o, &mut buf, &mut new_infos)?;
                    }
                    let (file, path) = self.dir.open_log(next_id)?;
                    new_infos.push(SegmentInfo {
                        id: next_id,
                        len: 0,
                        live: 0,
                    });
                    next_id += 1;
                    out = Some((file, path, 0));
                }
                let Some(o) = out.as_mut() else { continue };
                e.seg = new_infos.last().map_or(0, |s| s.id);
                e.off = o.2 as u32;
                buf.extend_from_slice(bytes);
                o.2 += bytes.len() as u64;
                if buf.len() >= 8 << 20 {
                    flush_buf(o, &mut buf)?;
                }
            }
            if let Some(o) = out.take() {
                finish_segment(o, &mut buf, &mut new_infos)?;
            }
        }
        let kept: Vec<SegmentInfo> = infos
            .iter()
            .filter(|s| s.live > 0 && !rewrite.contains(&s.id))
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
        let body = IndexBody::build(generation, self.seed(), new_active, kept, &entries);
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
    fn install(&self, v: &mut View, body: IndexBody) -> Result<()> {
        let generation = body.generation;
        let referenced: HashSet<u32> = body
            .segments
            .iter()
            .map(|s| s.id)
            .chain([body.active_segment])
            .collect();
        self.dir
            .write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        self.dir.open_log(body.active_segment)?;
        self.dir.sync()?;
        self.control.publish_generation(generation, false);
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

    fn write_empty_generation(&self, generation: u64, active: u32) -> Result<()> {
        let body = IndexBody::build(generation, self.seed(), active, Vec::new(), &[]);
        self.dir
            .write_file(&index::index_name(generation), &body.to_file_bytes()?)?;
        self.dir.open_log(active)?;
        self.dir.sync()
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
        let body = IndexBody::build(generation, self.seed(), active, Vec::new(), &[]);
        self.install(&mut v, body)?;
        on_change(None);
        Ok(())
    }

    /// Rebuilds the index from every segment in the directory, rewriting the live records into
    /// a fresh segment. Caller holds the write lock (or is creating the store).
    fn rebuild_locked(&self, v: &mut View, why: &str) -> Result<u64> {
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
                    hash,
                    seg: id,
                    off: at as u32,
                    len: (buf.len() - at) as u32,
                    ts: rec.timestamp.clamp(0.0, f64::from(u32::MAX)) as u32,
                });
            }
        }
        segment::append_at(&file, &path, 0, &buf)?;
        file.sync_all().ctx("sync segment", &path)?;
        let info = SegmentInfo {
            id,
            len: buf.len() as u64,
            live: buf.len() as u64,
        };
        let generation = self.control.state().generation + 1;
        let segments = if buf.is_empty() {
            Vec::new()
        } else {
            vec![info]
        };
        self.install(
            v,
            IndexBody::build(generation, self.seed(), id + 1, segments, &entries),
        )?;
        Ok(generation)
    }

    /// Makes everything appended so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        let v = self.view.read();
        if let Some(log) = &v.log {
            log.sync_data().ctx("sync segment", &v.log_path)?;
        }
        self.control.flush(&self.ctl_path)
    }

    pub(crate) fn stats(&self) -> DiskStats {
        let v = self.view.read();
        let index_live: u64 = v.infos.iter().map(|s| s.live).sum();
        let tail_live: u64 = v
            .tail
            .values()
            .flatten()
            .filter(|l| !l.tombstone)
            .map(|l| u64::from(l.len))
            .sum();
        let disk: u64 = v.infos.iter().map(|s| s.len).sum::<u64>() + v.scanned;
        DiskStats {
            entries: v.entries(),
            live_bytes: (index_live + tail_live).min(disk),
            disk_bytes: disk,
            generation: v.generation,
            tail_records: v.tail_records,
        }
    }

    /// Calls `f` with every live entry's newest record (expired ones included).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&RecordRef<'_>)) {
        let v = self.view.read();
        for locs in v.tail.values() {
            for l in locs.iter().filter(|l| !l.tombstone) {
                if let Some((_, rec)) = v.record(v.active, l.off) {
                    f(&rec);
                }
            }
        }
        let Some(index) = v.index.as_ref() else {
            return;
        };
        for s in index.body().slots.iter().filter(|s| s.seg != index::EMPTY) {
            let Some((_, rec)) = v.record(s.seg.to_native(), s.off.to_native()) else {
                continue;
            };
            let newer = v.tail.get(&s.hash.to_native()).is_some_and(|locs| {
                locs.iter().any(|l| {
                    v.record(v.active, l.off)
                        .is_some_and(|(_, r)| key_eq(&r, rec.prefix, rec.key))
                })
            });
            if !newer {
                f(&rec);
            }
        }
    }
}

fn flush_buf(o: &mut (File, PathBuf, u64), buf: &mut Vec<u8>) -> Result<()> {
    let start = o.2 - buf.len() as u64;
    segment::append_at(&o.0, &o.1, start, buf)?;
    buf.clear();
    Ok(())
}

fn finish_segment(
    mut o: (File, PathBuf, u64),
    buf: &mut Vec<u8>,
    infos: &mut [SegmentInfo],
) -> Result<()> {
    flush_buf(&mut o, buf)?;
    o.0.sync_all().ctx("sync segment", &o.1)?;
    if let Some(last) = infos.last_mut() {
        last.len = o.2;
        last.live = o.2;
    }
    Ok(())
}

/// What [`Store::verify`] found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Records read and checked, in every segment.
    pub records_checked: u64,
    /// Index slots checked against their records.
    pub slots_checked: u64,
    /// Each problem, in words; empty when the cache is sound.
    pub problems: Vec<String>,
}

impl Store {
    /// Checks every file: the index checksum, each slot against its record, every record of
    /// every segment (checksums and key hashes), and files that nothing refers to.
    pub(crate) fn verify(&self, mut progress: impl FnMut(u64)) -> VerifyReport {
        let mut report = VerifyReport::default();
        let v = self.view.read();
        let Some(index) = v.index.as_ref() else {
            report.problems.push("no index loaded".into());
            return report;
        };
        if !index.verify_checksum() {
            report.problems.push(format!(
                "{}: archive checksum mismatch",
                index.path.display()
            ));
        }
        for s in index.body().slots.iter().filter(|s| s.seg != index::EMPTY) {
            report.slots_checked += 1;
            let (seg, off, hash) = (s.seg.to_native(), s.off.to_native(), s.hash.to_native());
            let problem = match v.record(seg, off) {
                None => Some("points at no valid record".to_string()),
                Some((_, rec)) => {
                    let actual =
                        std::str::from_utf8(rec.prefix).map(|p| key_hash(self.seed(), p, rec.key));
                    (rec.key_hash != hash
                        || actual != Ok(hash)
                        || rec.len != s.len.to_native() as usize)
                        .then(|| "disagrees with its record (hash or length)".to_string())
                }
            };
            if let Some(p) = problem {
                report
                    .problems
                    .push(format!("index slot -> segment {seg} offset {off}: {p}"));
            }
        }
        let mut all: Vec<(u32, &Arc<ReadMap>, u64)> = v
            .infos
            .iter()
            .filter_map(|i| Some((i.id, v.segments.get(&i.id)?, i.len)))
            .collect();
        all.push((v.active, &v.log_map, v.seen_committed));
        for (id, map, len) in all {
            if (map.bytes().len() as u64) < len {
                report.problems.push(format!(
                    "{}: shorter ({} bytes) than the {len} bytes the cache refers to",
                    segment::segment_name(id),
                    map.bytes().len()
                ));
            }
            let valid = &map.bytes()[..usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(map.bytes().len())];
            let (stop, why) = segment::scan(valid, 0, |_, rec| {
                report.records_checked += 1;
                let ok = std::str::from_utf8(rec.prefix)
                    .is_ok_and(|p| key_hash(self.seed(), p, rec.key) == rec.key_hash);
                if !ok {
                    report.problems.push(format!(
                        "{}: a record's key does not match its hash",
                        segment::segment_name(id)
                    ));
                }
                if report.records_checked % 65536 == 0 {
                    progress(report.records_checked);
                }
            });
            if let Some(why) = why {
                report.problems.push(format!(
                    "{} offset {stop}: {why}",
                    segment::segment_name(id)
                ));
            }
        }
        let referenced: HashSet<u32> = v.infos.iter().map(|i| i.id).chain([v.active]).collect();
        if let Ok(entries) = fs::read_dir(&self.dir.path) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let orphan = match (
                    segment::parse_segment_name(&name),
                    index::parse_index_name(&name),
                ) {
                    (Some(id), _) => !referenced.contains(&id),
                    (_, Some(g)) => g != v.generation,
                    _ => name.ends_with(".tki.new") || name.ends_with(".ctl.new"),
                };
                if orphan {
                    report.problems.push(format!("{name}: not referenced by the current generation (left by an interrupted writer; compaction removes it)"));
                }
            }
        }
        report
    }
}
