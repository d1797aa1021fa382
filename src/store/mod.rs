//! The disk tier: composes the control page, the lock, the index and the segments into one
//! shared store. Every process follows the control page: a new committed length means records to
//! scan into its tail table, a new generation means a new index to map.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::clock::Clock;
use crate::control::{self, Control, DEFAULT_DISK_BOUND, State};
use crate::error::{Error, IoContext, Result};
use crate::files::Dir;
use crate::heat::{self, Heat};
use crate::index::{self};
use crate::keys::{self, KeyBytes, random_seed};
use crate::lock::LockFile;
use crate::map::ReadMap;
use crate::pool::{self, Counter};
use crate::prefixes::Prefixes;
use crate::record::{self, Kind, RecordRef};
use crate::segment;

mod append;
mod compact;
mod evict;
mod follow;
mod garbage;
mod generation;
mod logfile;
mod rebuild;
mod rewrite;
mod tail;
mod verify;
mod view;

pub use generation::CompactReport;
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
    pub(crate) fn get<R, K: KeyBytes + ?Sized>(
        &self,
        hash: u64,
        prefix: &str,
        key: &K,
        lookup: Lookup,
        f: impl FnOnce(&Arc<ReadMap>, &RecordRef<'_>) -> R,
    ) -> Option<R> {
        let (map, rec) = self.0.find(hash, prefix.as_bytes(), key, lookup)?;
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
    /// The disk bound this process was given (`Some(None)`: none), which it sets for the
    /// directory; `None`: it was given none, and uses the directory's.
    pub disk_bound: Option<Option<u64>>,
}

/// Disk-tier numbers for stats.
#[derive(Clone, Debug, Default)]
pub(crate) struct DiskStats {
    pub entries: u64,
    pub live_bytes: u64,
    /// Bytes of the segment files.
    pub segment_bytes: u64,
    /// Bytes the cache's files take as the file system counts them (what the bound bounds).
    pub disk_bytes: u64,
    pub max_disk_bytes: Option<u64>,
    pub generation: u64,
    pub recent_records: u64,
    pub tail_records: u64,
}

/// Called with the hash of each key another process changed, or `None` when everything may
/// have changed (a new generation): how the store tells its owner's RAM tier. Given once, at
/// open.
pub(crate) type OnChange = Box<dyn Fn(Option<u64>) + Send + Sync>;

pub(crate) struct Store {
    dir: Dir,
    opts: Options,
    control: Control,
    ctl_path: PathBuf,
    lock: Option<LockFile>,
    /// Appends are copied in through a writable mapping (not `pwrite`): see
    /// [`crate::sys::mapped_writes_are_safe`]. Turned off for good if space cannot be
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
    /// Told of every key another process changed (see [`OnChange`]).
    on_change: OnChange,
    /// After finding another compaction under way, or a failed one: (generation, tail records)
    /// before which appends do not try to start one again.
    retry_compaction: Mutex<(u64, u64)>,
    /// Where the compactions of this handle are counted (the pool statistics), once set.
    pool: std::sync::OnceLock<Arc<pool::Slot>>,
    /// The cache's clock: when automatic expiry passes are due.
    clock: Arc<dyn Clock>,
    /// Which entries were read since eviction last looked (`None`: the file cannot be had;
    /// eviction then keeps none).
    heat: Option<Heat>,
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
    /// (legacy.rs marks the original's files for migration there); `on_change` is told of the
    /// keys other processes change from then on.
    pub(crate) fn open(
        dir: Dir,
        opts: Options,
        clock: Arc<dyn Clock>,
        on_create: &dyn Fn(&Dir) -> Result<()>,
        on_change: OnChange,
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
                        kill_point!("open.generation_written");
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
        let mut store = Self {
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
            on_change,
            retry_compaction: Mutex::new((u64::MAX, 0)),
            pool: std::sync::OnceLock::new(),
            clock,
            heat: None,
        };
        match store.opts.disk_bound {
            Some(bound) => store.control.set_disk_bound(bound, false),
            None => store.control.set_disk_bound(Some(DEFAULT_DISK_BOUND), true),
        }
        let heat_len = heat::file_len(store.disk_bound());
        store.heat = Heat::open(&store.dir, store.is_writable(), heat_len)
            .map_err(|e| log::debug!("no heat map: {e}"))
            .ok();
        if rebuild {
            let _w = store.writer.lock();
            let _l = store.lock()?;
            store.rebuild_locked(
                &mut store.view.write(),
                "control page was missing or damaged",
            )?;
        } else {
            store.reload(false)?;
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

    /// Counts this handle's compactions (and what they drop) into `slot` from now on.
    pub(crate) fn count_into(&self, slot: Arc<pool::Slot>) {
        let _ = self.pool.set(slot);
    }

    /// Counts a compaction that started at `started` and did what `report` says.
    pub(super) fn count_compaction(&self, started: std::time::Instant, report: &CompactReport) {
        if let Some(p) = self.pool.get() {
            p.add(Counter::Compaction);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            p.add_n(Counter::CompactionMicros, micros);
            if report.expired > 0 {
                p.add_n(Counter::Expired, report.expired);
                p.add_n(Counter::ExpiredReclaimed, report.expired);
            }
            if report.evicted > 0 {
                p.add_n(Counter::DiskEviction, report.evicted);
            }
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.control.seed()
    }

    /// The key hash of `rec` computed from its prefix and key text, not the one it stores
    /// (rebuilds place records by it; verify checks the stored one against it). `None` for a
    /// prefix that is not text or a packed key that does not unpack.
    pub(super) fn hash_of(&self, rec: &RecordRef<'_>) -> Option<u64> {
        let prefix = std::str::from_utf8(rec.prefix).ok()?;
        Some(keys::key_hash(self.seed(), prefix, &rec.key_text()?))
    }

    /// Notes a hit on the key of `hash`: eviction keeps it once more.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) {
        if let Some(h) = &self.heat {
            h.touch(hash);
        }
    }

    /// The directory's disk bound (`None`: unbounded).
    pub(crate) fn disk_bound(&self) -> Option<u64> {
        self.control.disk_bound()
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
            None,
            SegmentMaps::default(),
            Vec::new(),
            u32::MAX,
            0,
            dir.join("none"),
        )
    }

    /// Makes everything appended so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        let v = self.view.read();
        v.log.sync()?;
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
            segment_bytes: disk,
            disk_bytes: evict::usage(&self.dir.path).map_or(0, |(total, _)| total),
            max_disk_bytes: self.disk_bound(),
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
