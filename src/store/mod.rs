//! The disk tier: composes the control page, the lock, the index and the segments into one
//! shared store. Every process follows the control page: a new committed length means records to
//! scan into its tail table, a new generation means a new index to map.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::control::{self, Control, State};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Index, SegmentInfo};
use crate::keys::random_seed;
use crate::lock::LockFile;
use crate::map::{ReadMap, WriteMap};
use crate::prefixes::Prefixes;
use crate::record::{self, Kind, RecordRef};
use crate::segment::{self, Dir};

mod compact;
mod tail;
mod verify;
mod view;

pub use compact::CompactReport;
use tail::Tail;
pub use verify::VerifyReport;
pub(crate) use view::Lookup;
use view::{SegmentMaps, View, key_eq};

/// How far the old view `cur` must read its log for the keys that changed when `new`, the
/// next generation, replaces it: if the log goes on, as far as `new` scanned it (later records
/// are `new`'s to follow, and a later compaction may trim the log, never below what was
/// committed); if `new` sealed it, to its end (fixed since the seal).
fn rest_end(cur: &View, new: &View) -> u64 {
    if new.active == cur.active {
        new.scanned
    } else {
        u64::MAX
    }
}

/// A read guard of the view: what lookups go through.
pub(crate) struct Reader<'a>(RwLockReadGuard<'a, View>);

impl Reader<'_> {
    /// Runs `f` on the newest live record of the key, if any (tombstones are misses).
    pub(crate) fn get<R>(
        &self,
        hash: u64,
        prefix: &str,
        key: &str,
        lookup: Lookup,
        f: impl FnOnce(&Arc<ReadMap>, &RecordRef<'_>) -> R,
    ) -> Option<R> {
        let (map, rec) = self
            .0
            .find(hash, prefix.as_bytes(), key.as_bytes(), lookup)?;
        (rec.kind != Kind::Tombstone).then(|| f(map, &rec))
    }

    /// Starts the reads of the shared map that lookups of these key hashes will make.
    pub(crate) fn prefetch(&self, hashes: &[u64]) {
        self.0.prefetch(hashes);
    }
}

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

/// Disk-tier numbers for stats.
#[derive(Clone, Debug, Default)]
pub(crate) struct DiskStats {
    pub entries: u64,
    pub live_bytes: u64,
    pub disk_bytes: u64,
    pub generation: u64,
    pub recent_records: u64,
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
    /// Appends are copied in through a writable mapping (not `pwrite`): see
    /// [`crate::map::mapped_writes_are_safe`]. Turned off for good if space cannot be
    /// allocated for the mapping.
    mapped_writes: AtomicBool,
    writer: Mutex<()>,
    view: RwLock<View>,
    /// The prefix table: numbers of interned prefixes, which records hold instead of text.
    prefixes: Arc<Prefixes>,
    /// The control page state (packed, see [`pack`]) that a read guard last found the view
    /// caught up with. Every change of the view tells the RAM tier what changed before its write
    /// guard goes, so while the control page still shows this state the RAM tier is current
    /// and a RAM hit needs no guard ([`Store::unchanged`]).
    seen: AtomicU64,
    /// After finding another compaction under way, or a failed one: (generation, tail records)
    /// before which appends do not try to start one again.
    retry_compaction: Mutex<(u64, u64)>,
}

/// A control page state in one word, when it fits (generations and committed lengths below
/// 2^32; appends keep the committed length below 2^32).
fn pack(state: State) -> Option<u64> {
    (state.generation <= u64::from(u32::MAX) && state.committed <= u64::from(u32::MAX))
        .then_some(state.generation << 32 | state.committed)
}

/// Drops a view that was replaced, on a thread of its own where one can be started: unmapping
/// the last mapping of a file compaction deleted frees the file (its cached pages, its blocks),
/// milliseconds for a large index, which no lookup or append should wait for.
fn discard(old: View) {
    if old.index.is_none() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("tokcache-unmap".into())
        .spawn(move || drop(old));
    if let Err(e) = spawned {
        log::debug!("dropping an old view inline: {e}");
    }
}

/// A file of a newer release: never rebuilt over.
fn is_newer(e: &Error) -> bool {
    matches!(e, Error::NewerFormat { .. })
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

impl Store {
    /// Opens the store in `dir`, creating it if needed. `on_create` is called when this process
    /// creates a new, empty store, under the lock and before any other process can see it
    /// (legacy.rs marks the original's files for migration there).
    pub(crate) fn open(
        dir: Dir,
        opts: Options,
        on_create: &dyn Fn(&Dir) -> Result<()>,
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
        // A new store's control page and first, empty generation are made under the write
        // lock, so no other process sees a generation without its files; `rebuild`: the
        // control page was lost but segments remain.
        let (control, rebuild) = match Control::open(&ctl_path, writable) {
            Ok(c) => (c, false),
            Err(e) if lock.is_none() => return Err(e),
            Err(first) => {
                let held = lock.as_ref().map(LockFile::exclusive).transpose()?;
                match Control::open(&ctl_path, true) {
                    Ok(c) => (c, false),
                    Err(_) => {
                        let newest = Self::highest_index_generation(&dir)?;
                        if let Some(g) = newest {
                            // A control page a newer release wrote is not damage to repair.
                            index::check_not_newer(&dir.join(&index::index_name(g)))?;
                        }
                        if !is_not_found(&first) {
                            log::warn!("{first}; rebuilding the control page");
                        }
                        let generation = newest.map_or(0, |g| g + 1);
                        let seed = random_seed();
                        let empty = segment::list_segments(&dir.path)?.is_empty();
                        // The log of a rebuild is not known yet (0): it publishes one.
                        let log = if empty {
                            on_create(&dir)?;
                            Self::write_empty_generation(&dir, seed, generation)?
                        } else {
                            0
                        };
                        Control::create(&dir, seed, generation, log)?;
                        drop(held);
                        (Control::open(&ctl_path, true)?, !empty)
                    }
                }
            }
        };
        let prefixes = Arc::new(Prefixes::open(&dir)?);
        let placeholder = Self::empty_view(&dir, &prefixes);
        // `TOKCACHE_APPEND=pwrite` forces `pwrite` (README: for a file system misjudged here).
        let forced_pwrite = std::env::var_os("TOKCACHE_APPEND").is_some_and(|v| v == "pwrite");
        let mapped_writes = AtomicBool::new(
            !forced_pwrite && lock.as_ref().is_some_and(LockFile::allows_mapped_writes),
        );
        let store = Self {
            dir,
            opts,
            control,
            ctl_path,
            lock,
            mapped_writes,
            writer: Mutex::new(()),
            view: RwLock::new(placeholder),
            prefixes,
            seen: AtomicU64::new(u64::MAX),
            retry_compaction: Mutex::new((u64::MAX, 0)),
        };
        if rebuild {
            let _w = store.writer.lock();
            let _l = store.lock()?;
            store.rebuild_locked(
                &mut store.view.write(),
                "control page was missing or damaged",
            )?;
        } else {
            store.reload(&|_| {}, false)?;
        }
        Ok(store)
    }

    fn lock(&self) -> Result<crate::lock::Locked<'_>> {
        match &self.lock {
            Some(l) => match self.control.lock_word() {
                Some(word) => l.writer(word),
                None => l.exclusive(),
            },
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

    /// How records of `prefix` name it: by number once it is in the prefix table (adding it,
    /// under the write lock, the first time), by text if the table is full or damaged.
    pub(crate) fn prefix_field<'p>(&self, prefix: &'p str) -> Result<record::Prefix<'p>> {
        if let Some(id) = self.prefixes.id(prefix) {
            return Ok(record::Prefix::Interned(id));
        }
        if self.prefixes.is_closed() {
            return Ok(record::Prefix::Text(prefix));
        }
        let _w = self.writer.lock();
        let _l = self.lock()?;
        Ok(
            match self
                .prefixes
                .intern(prefix, || self.holds_prefix_numbers())?
            {
                Some(id) => record::Prefix::Interned(id),
                None => record::Prefix::Text(prefix),
            },
        )
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// Whether any segment holds a record that names its prefix by number: before the table
    /// is first written, that means it was lost (a number must not be given twice). Reads
    /// every record, once in the life of a cache (an empty one when it is new). Caller holds
    /// the write lock, so no log is trimmed meanwhile.
    fn holds_prefix_numbers(&self) -> Result<bool> {
        for id in self.list_segments()? {
            let p = self.dir.join(&segment::segment_name(id));
            let file = match File::open(&p) {
                Ok(f) => f,
                // Retired by a compaction since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open segment", &p, e)),
            };
            let map = segment::map_segment(&file, &p, u64::MAX)?;
            let mut found = false;
            segment::scan(map.bytes(), 0, &self.prefixes, |_, rec| {
                found |= rec.prefix_id.is_some();
            });
            if found {
                return Ok(true);
            }
        }
        Ok(false)
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
    fn empty_view(dir: &Dir, prefixes: &Arc<Prefixes>) -> View {
        View::new(
            Arc::clone(prefixes),
            u64::MAX,
            None,
            SegmentMaps::default(),
            Vec::new(),
            u32::MAX,
            0,
            dir.join("none"),
        )
    }

    /// Maps generation `state.generation` and scans its log up to `state.committed`. When the
    /// view in `prev`, an older generation of the same epoch, has the same log, the records it
    /// has scanned past the new `log_start` come from its tail table instead (a compaction
    /// leaves the log going on, and what was appended while it ran is the new tail); `prev` is
    /// read-locked only to copy them.
    fn load_view(&self, state: State, prev: Option<&RwLock<View>>) -> Result<View> {
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
        // The log, when the index lists it too, is mapped below (`log_head`, `log_map`).
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
            segments,
            infos,
            active,
            log_start,
            log_path,
        );
        view.recent = recent;
        self.ensure_log(&mut view, false)?;
        if let Some(file) = &view.log {
            view.log_head = Arc::new(segment::map_segment(file, &view.log_path, log_start)?);
        }
        if view.log.is_none() && state.committed > 0 {
            let missing = io::Error::from(io::ErrorKind::NotFound);
            return Err(Error::io("open segment", &view.log_path, missing));
        }
        let carried = prev.is_some_and(|p| view.carry_tail(&p.read()));
        if !carried {
            let expected = state.committed.min(view.log_len).saturating_sub(log_start) / 96;
            view.tail = Tail::with_capacity(expected.min(1 << 24) as usize);
        }
        view.scan_log(state.committed, |_| {})?;
        Ok(view)
    }

    /// Loads the current generation, retrying while a compaction elsewhere moves files away;
    /// rebuilds it from the segments if it cannot be read. `locked`: the caller holds the
    /// writer mutex and the file lock (and no view guard).
    fn reload(&self, on_change: OnChange<'_>, locked: bool) -> Result<()> {
        let mut last = None;
        for _ in 0..64 {
            let state = self.control.state();
            match self.load_view(state, Some(&self.view)) {
                Ok(v) => {
                    self.install_view(v, on_change);
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
            Ok(v) => self.install_view(v, on_change),
            Err(_) => {
                let mut v = self.view.write();
                self.rebuild_locked(&mut v, "index unreadable")?;
                on_change(None);
            }
        }
        drop(held);
        Ok(())
    }

    /// Replaces the view unless it would go back: a thread that loaded an older state while
    /// another moved on must not undo that. Tells `on_change` (while no other thread can look
    /// anything up) which keys may have changed since the old view: those of the records it had
    /// not seen, or everything when that cannot be known.
    fn install_view(&self, new: View, on_change: OnChange<'_>) {
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
                on_change(Some(hash));
            }
        } else if cur.index.is_some()
            && new.generation == cur.generation + 1
            && new.epoch() == cur.epoch()
            && cur.scan_rest(rest_end(&cur, &new), |hash| on_change(Some(hash)))
        {
            // The next generation of the same epoch: compaction moved records around, and
            // changed only what records of the old log (the rest of it, just scanned) and of
            // the new one say. When the log goes on, the new tail is part of the old log,
            // seen before or just now; a new log also has records appended after it began.
            if new.active != cur.active {
                for (hash, _) in new.tail.iter() {
                    on_change(Some(hash));
                }
            }
        } else {
            on_change(None);
        }
        let old = std::mem::replace(&mut *cur, new);
        drop(cur);
        discard(old);
    }

    /// Opens the active segment if the view has none (it did not exist yet when the view was
    /// loaded): without it the view could neither see others' records nor append after them.
    /// `create`: make it if it is missing (writers); otherwise a missing one stays `None`.
    fn ensure_log(&self, v: &mut View, create: bool) -> Result<()> {
        if v.log.is_some() {
            return Ok(());
        }
        let file = if create {
            self.dir.open_log(v.active)?.0
        } else {
            let opened = OpenOptions::new()
                .read(true)
                .write(self.is_writable())
                .custom_flags(libc::O_NOFOLLOW)
                .open(&v.log_path);
            match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("open segment", &v.log_path, e)),
            }
        };
        v.log_len = file.metadata().ctx("stat segment", &v.log_path)?.len();
        // Nothing visible until a scan of the committed records (`View::scan_log`).
        v.log_map = Arc::new(segment::map_segment(&file, &v.log_path, v.log_len)?.visible_to(0));
        v.log = Some(file);
        Ok(())
    }

    /// The view, caught up with the control page, held for writing. The caller holds the file
    /// lock, so nothing moves while the guard lives: appends go exactly at the committed length.
    fn locked_view(&self, on_change: OnChange<'_>) -> Result<RwLockWriteGuard<'_, View>> {
        loop {
            let state = self.control.state();
            let mut v = self.view.write();
            if v.generation == state.generation {
                self.ensure_log(&mut v, true)?;
                v.scan_log(state.committed, |h| on_change(Some(h)))?;
                return Ok(v);
            }
            drop(v);
            self.reload(on_change, true)?;
        }
    }

    /// Loads a new generation, if there is one, before the caller takes the write lock: loading
    /// it under the lock (mapping the index and segments, scanning the new log) would hold up
    /// every writer. (One published in between is loaded under the lock, as always.)
    fn follow_generation(&self, on_change: OnChange<'_>) -> Result<()> {
        if self.view.read().generation != self.control.state().generation {
            self.refresh(on_change)?;
        }
        Ok(())
    }

    /// Catches up with other processes: new records, or a new generation.
    pub(crate) fn refresh(&self, on_change: OnChange<'_>) -> Result<()> {
        self.reader(on_change).map(drop)
    }

    /// The view, caught up with the control page, held for reading: one lock for the check and
    /// the lookups that follow. On error (the new state cannot be loaded) nothing is returned;
    /// [`Store::last_view`] still serves the last good one.
    pub(crate) fn reader(&self, on_change: OnChange<'_>) -> Result<Reader<'_>> {
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
        self.catch_up(state, on_change)?;
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

    fn catch_up(&self, state: State, on_change: OnChange<'_>) -> Result<()> {
        let mut v = self.view.write();
        if v.generation != state.generation {
            drop(v);
            return self.reload(on_change, false);
        }
        if state.committed > v.scanned {
            self.ensure_log(&mut v, false)?;
        }
        v.scan_log(state.committed, |h| on_change(Some(h)))
    }

    /// Appends encoded records (under the lock) and publishes them. `true`: the log is past its
    /// thresholds, and the caller should start a compaction ([`Store::compact_when_full`]).
    /// (Half again past the thresholds, this waits for one itself.)
    /// `published` runs once the records are visible, before any other writer of this process
    /// can append: the place to update the RAM tier without racing another thread's write.
    pub(crate) fn append(
        &self,
        bytes: &[u8],
        on_change: OnChange<'_>,
        published: impl FnOnce(),
    ) -> Result<bool> {
        self.append_with(on_change, |_| bytes.into(), published)
    }

    /// Appends those of the encoded `records` whose key has no record yet in any process (no
    /// value, no removal, expired or not), checked under the write lock, so that a record
    /// another process wrote first is never superseded by them: how entries of the original's
    /// files come in (a value written through the cache is newer than any such file). Returns
    /// how many were appended, and whether to start a compaction (as [`Store::append`]).
    pub(crate) fn append_absent(
        &self,
        records: &[u8],
        on_change: OnChange<'_>,
    ) -> Result<(u64, bool)> {
        let mut appended = 0;
        let full = self.append_with(
            on_change,
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
    fn append_with<'r>(
        &self,
        on_change: OnChange<'_>,
        records: impl FnOnce(&View) -> std::borrow::Cow<'r, [u8]>,
        published: impl FnOnce(),
    ) -> Result<bool> {
        self.follow_generation(on_change)?;
        let w = self.writer.lock();
        let l = self.lock()?;
        let mut v = self.locked_view(on_change)?;
        let bytes = records(&v);
        if bytes.is_empty() {
            published();
            return Ok(false);
        }
        if v.damaged_tail() {
            // Published records lost in a machine crash: new ones go to a new log (the
            // compaction seals this one), never over bytes other processes were told about.
            log::warn!(
                "{}: damaged past its intact {} bytes; sealing it",
                v.log_path.display(),
                v.scanned
            );
        }
        if v.damaged_tail() || v.scanned + bytes.len() as u64 > u64::from(u32::MAX) {
            self.compact_locked(&mut v, f64::NEG_INFINITY, false, on_change)?;
        }
        let off = v.scanned;
        let committed = off + bytes.len() as u64;
        let view = &mut *v;
        if let Some(file) = &view.log {
            view.log_len = segment::reserve(
                file,
                &view.log_path,
                view.log_start,
                view.log_len,
                committed,
            )?;
        }
        if !self.write_mapped(view, off, &bytes)?
            && let Some(file) = &view.log
        {
            segment::append_at(file, &view.log_path, off, &bytes)?;
        }
        self.control.publish_committed(committed);
        v.scan_log(committed, |_| {})?;
        published();
        let (full, wait) = self.wants_compaction(&v);
        drop((v, l, w));
        if wait {
            // The record is published; a failed compaction (disk full, say) leaves the old
            // generation in place and is tried again later.
            if let Err(e) = self.compact_when_full(true, on_change) {
                log::warn!("compaction failed, will retry: {e}");
            }
            return Ok(false);
        }
        Ok(full)
    }

    /// Copies records into the log through the writable mapping, (re)mapping it after growth.
    /// `false`: not done, the caller writes them with `pwrite` (file system without safe mapped
    /// writes, or space that cannot be allocated: the write then reports a full disk itself).
    fn write_mapped(&self, v: &mut View, off: u64, bytes: &[u8]) -> Result<bool> {
        if !self.mapped_writes.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let end = off + bytes.len() as u64;
        if v.log_write.as_ref().is_none_or(|m| !m.covers(off, end)) {
            v.log_write = None;
            let Some(file) = &v.log else {
                return Ok(false);
            };
            // From the 2 MiB boundary below the append to the space reserved: appends go on
            // from there until the log grows again.
            let start = off - off % crate::map::HUGE_PAGE;
            // Space another process reserved may be sparse (its file system call failed, say):
            // everything mapped for writing must be allocated.
            if let Err(e) = crate::map::allocate(file, start, v.log_len.saturating_sub(start)) {
                log::debug!("{}: appends use pwrite ({e})", v.log_path.display());
                self.mapped_writes.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            let map = WriteMap::new(file, start, v.log_len)
                .ctx("map segment for writing", &v.log_path)?;
            v.log_write = Some(map);
        }
        Ok(v.log_write.as_ref().is_some_and(|m| m.write(off, bytes)))
    }

    /// Whether the tail should go into a new index: it has `compact_records` records or
    /// `compact_bytes` bytes. This bounds what opening the cache scans. (Into a recent index,
    /// usually, when the cache is large: see [`Store::merge_at`].)
    fn tail_is_full(&self, v: &View) -> bool {
        v.tail_records >= self.opts.compact_records
            || v.scanned.saturating_sub(v.log_start) >= self.opts.compact_bytes
    }

    /// The number of log records (the recent index's and the tail's) past which compaction
    /// merges them into a new full index instead of a new recent index: `compact_records`, or
    /// 1/32 of the full index's entries if that is more. Large caches then do not rewrite
    /// their whole index every few thousand writes, only a recent index of at most 1/32 of it.
    fn merge_at(&self, v: &View) -> u64 {
        let indexed = v.index.as_ref().map_or(0, |i| i.body().entries.to_native());
        self.opts.compact_records.max(indexed / 32)
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
        let (recent_records, recent_bytes) = v.recent_size();
        let tail_live: u64 = v
            .tail
            .iter()
            .filter(|(_, l)| !l.tombstone())
            .map(|(_, l)| u64::from(l.len()))
            .sum();
        let sealed = v.infos.iter().filter(|s| s.id != v.active);
        let disk: u64 = sealed.map(|s| s.len).sum::<u64>() + v.scanned;
        DiskStats {
            entries: v.entries(),
            live_bytes: (index_live + recent_bytes + tail_live).min(disk),
            disk_bytes: disk,
            generation: v.generation,
            recent_records,
            tail_records: v.tail_records,
        }
    }

    /// Calls `f` with every live entry's newest record (expired ones included).
    /// Records whose prefix number the table lacks are left out (they are not served).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&RecordRef<'_>)) {
        let v = self.view.read();
        for (_, l) in v.log_entries().iter().filter(|(_, l)| !l.tombstone()) {
            if let Some((_, rec)) = v.record(v.active, l.off)
                && !rec.prefix.is_empty()
            {
                f(&rec);
            }
        }
        let Some(index) = v.index.as_ref() else {
            return;
        };
        for s in index.slots() {
            let Some((_, rec)) = v.record(s.seg, s.off) else {
                continue;
            };
            if !rec.prefix.is_empty() && !v.in_log(rec.key_hash, rec.prefix, rec.key, false) {
                f(&rec);
            }
        }
    }
}
