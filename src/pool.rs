//! Pool statistics: the counters of every process that uses a cache directory, in one shared
//! file, `tokcache.stats` (docs/format.md, "Pool statistics"). Each cache handle claims a slot
//! of its own (an open-file-description lock on the slot's byte says it is alive; the kernel
//! drops it when the process dies) and counts into it with relaxed atomic adds, the lookups of
//! each thread on a cache line of their own (striped as [`crate::tally`] does), so processes
//! never write to each other's lines. Reading sums every slot, dead ones included, plus the
//! counts of dead processes whose slots were taken over since (`retired`): a process that
//! exits or is killed keeps its counts in the totals.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};
use crate::files::{self, Dir};
use crate::fork::Held;
use crate::map::{SharedPage, Words};
use crate::sys;

pub(crate) const FILE_NAME: &str = "tokcache.stats";
const MAGIC: &[u8; 8] = b"TOKCSTA1";
const VERSION: u32 = 1;
/// Bytes before the first slot: the fixed header (`HEADER_FIXED`), then the retired totals.
const HEADER: usize = 4096;
const HEADER_FIXED: usize = 64;
/// Where the retired totals start (one word per counter).
const RETIRED_WORD: usize = 16;
/// Handles that can count at once; past that, a handle counts for itself only.
pub(crate) const SLOTS: usize = 256;
const WORDS_PER_LINE: usize = 16;
const STRIPES: usize = 8;
/// A slot: one line of who it is, one of rare counters, one per stripe of lookup counters.
const SLOT_WORDS: usize = (2 + STRIPES) * WORDS_PER_LINE;
const FILE_LEN: usize = HEADER + SLOTS * SLOT_WORDS * 8;
/// The pid, start and last-seen words of a slot's first line.
const PID: usize = 0;
const STARTED: usize = 1;
const LAST_SEEN: usize = 2;

/// What is counted. The first [`HOT`] are counted on every lookup or set (striped by thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    RamHit = 0,
    DiskHit,
    Miss,
    SharedHit,
    Set,
    Removal,
    RamEviction,
    DiskEviction,
    Expired,
    Compaction,
    CompactionMicros,
    /// Failed operations of the shared tier (errors and timeouts).
    SharedError,
    /// Entries the shared tier's writer dropped (queue full, tier down).
    SharedDrop,
    /// Expired entries that compactions dropped from disk (also counted in `Expired`).
    ExpiredReclaimed,
}

const HOT: usize = 5;
const COUNTERS: usize = 14;
const ALL: [Counter; COUNTERS] = [
    Counter::RamHit,
    Counter::DiskHit,
    Counter::Miss,
    Counter::SharedHit,
    Counter::Set,
    Counter::Removal,
    Counter::RamEviction,
    Counter::DiskEviction,
    Counter::Expired,
    Counter::Compaction,
    Counter::CompactionMicros,
    Counter::SharedError,
    Counter::SharedDrop,
    Counter::ExpiredReclaimed,
];

/// The word of `counter` in a slot, for stripe `stripe`.
fn word_of(counter: Counter, stripe: usize) -> usize {
    let c = counter as usize;
    if c < HOT {
        (2 + stripe) * WORDS_PER_LINE + c
    } else {
        WORDS_PER_LINE + (c - HOT)
    }
}

/// Totals of one slot, or of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts(pub [u64; COUNTERS]);

impl Counts {
    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }
}

/// One live slot, as read.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub pid: u32,
    pub started: f64,
    pub last_seen: f64,
    pub counts: Counts,
}

/// What [`read`] found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reading {
    pub totals: Counts,
    pub live: Vec<Row>,
}

/// The mapped file.
struct PoolFile {
    page: Arc<SharedPage>,
    /// Declared before `file`: unregistered before it is closed (fork.rs).
    _held: Held,
    file: File,
}

impl PoolFile {
    fn words(&self, first: usize, n: usize) -> &[AtomicU64] {
        self.page.atomics(first * 8, n)
    }

    fn slot(&self, i: usize) -> &[AtomicU64] {
        self.words(HEADER / 8 + i * SLOT_WORDS, SLOT_WORDS)
    }

    fn retired(&self) -> &[AtomicU64] {
        self.words(RETIRED_WORD, COUNTERS)
    }
}

/// A slot's counts, from its words as `word` loads them.
fn slot_counts(word: impl Fn(usize) -> u64) -> Counts {
    let mut c = Counts::default();
    for counter in ALL {
        let i = counter as usize;
        c.0[i] = if i < HOT {
            (0..STRIPES)
                .map(|s| word(word_of(counter, s)))
                .fold(0u64, u64::wrapping_add)
        } else {
            word(word_of(counter, 0))
        };
    }
    c
}

fn load(words: &[AtomicU64]) -> impl Fn(usize) -> u64 + '_ {
    |i| words[i].load(Ordering::Relaxed)
}

fn zero_counts(words: &[AtomicU64]) {
    for w in &words[WORDS_PER_LINE..] {
        w.store(0, Ordering::Relaxed);
    }
}

/// Where a handle counts: its slot of the directory's file, or memory of its own (a read-only
/// or RAM-only cache, or every slot taken).
pub(crate) struct Slot {
    words: Option<Words>,
    /// The file (its lock on the slot's byte says the slot is taken) and the slot's index.
    shared: Option<(Arc<PoolFile>, usize)>,
}

impl Slot {
    /// Memory of its own: counted for this handle only (nowhere if even that cannot be had).
    pub(crate) fn private() -> Self {
        Self {
            words: Words::anonymous(SLOT_WORDS).ok(),
            shared: None,
        }
    }

    /// Claims a slot of `dir`'s file (made if missing). On any failure the handle counts for
    /// itself only (the cache works the same; the pool's totals miss it).
    pub(crate) fn claim(dir: &Dir) -> Self {
        match claim(dir) {
            Ok(Some(s)) => s,
            Ok(None) => {
                log::info!(
                    "{}: every pool-statistics slot is taken; this handle counts for itself",
                    dir.path.display()
                );
                Self::private()
            }
            Err(e) => {
                log::debug!("pool statistics off for this handle: {e}");
                Self::private()
            }
        }
    }

    /// Counts one `counter`.
    #[inline]
    pub(crate) fn add(&self, counter: Counter) {
        self.add_n(counter, 1);
    }

    /// Counts `n` of `counter`.
    #[inline]
    pub(crate) fn add_n(&self, counter: Counter, n: u64) {
        self.add_in(crate::tally::stripe(), counter, n);
    }

    /// Counts `n` of `counter` in `stripe` (this thread's: [`crate::tally::stripe`]). Every
    /// 1024th lookup or set of a stripe also notes the time (the handle's "last seen").
    #[inline]
    pub(crate) fn add_in(&self, stripe: usize, counter: Counter, n: u64) {
        let Some(words) = &self.words else { return };
        let before = words
            .get(word_of(counter, stripe))
            .fetch_add(n, Ordering::Relaxed);
        if (counter as usize) < HOT && before.is_multiple_of(1024) {
            seen_now(words);
        }
    }

    /// The slot's index in the file, if it has one.
    pub(crate) fn index(&self) -> Option<usize> {
        self.shared.as_ref().map(|(_, i)| *i)
    }
}

#[cold]
fn seen_now(words: &Words) {
    if let Some(now) = sys::coarse_realtime() {
        words.get(LAST_SEEN).store(now.to_bits(), Ordering::Relaxed);
    }
}

fn open_file(dir: &Dir) -> Result<File> {
    let mut header = vec![0u8; HEADER_FIXED];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(SLOTS as u32).to_le_bytes());
    header[16..20].copy_from_slice(&((SLOT_WORDS * 8) as u32).to_le_bytes());
    files::open_or_make_whole(dir, FILE_NAME, FILE_LEN as u64, &header)
}

fn map_file(file: File, path: &Path, writable: bool) -> Result<PoolFile> {
    let len = file.metadata().ctx("stat", path)?.len();
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0).ctx("read", path)?;
    if len != FILE_LEN as u64
        || &header[..8] != MAGIC
        || header[8..12] != VERSION.to_le_bytes()
        || header[12..16] != (SLOTS as u32).to_le_bytes()
    {
        return Err(crate::Error::corrupt(
            path,
            "not a pool statistics file of this version",
        ));
    }
    let page = SharedPage::new(&file, FILE_LEN, HEADER_FIXED, writable).ctx("map", path)?;
    Ok(PoolFile {
        page: Arc::new(page),
        _held: Held::register(&file),
        file,
    })
}

fn claim(dir: &Dir) -> Result<Option<Slot>> {
    let path = dir.join(FILE_NAME);
    let pool = Arc::new(map_file(open_file(dir)?, &path, true)?);
    for i in 0..SLOTS {
        if !sys::lock_byte(&pool.file, i as u64).ctx("lock", &path)? {
            continue;
        }
        // Ours now: a process that had it is gone. Its counts go to the retired totals
        // before the slot is cleared (a reader in between may count them twice, never lose
        // them).
        let words = pool.slot(i);
        let left = slot_counts(load(words));
        if left != Counts::default() {
            for (r, n) in pool.retired().iter().zip(left.0) {
                r.fetch_add(n, Ordering::Relaxed);
            }
            zero_counts(words);
        }
        words[PID].store(u64::from(std::process::id()), Ordering::Relaxed);
        let now = sys::coarse_realtime().unwrap_or(0.0).to_bits();
        words[STARTED].store(now, Ordering::Relaxed);
        words[LAST_SEEN].store(now, Ordering::Relaxed);
        let words = Words::in_page(
            Arc::clone(&pool.page),
            HEADER + i * SLOT_WORDS * 8,
            SLOT_WORDS,
        );
        return Ok(Some(Slot {
            words: Some(words),
            shared: Some((pool, i)),
        }));
    }
    Ok(None)
}

/// Reads the pool's totals and, given `Some(own)`, its live handles (`own`: a slot of this
/// process, alive though its lock does not show to itself); `None`: the totals only, without
/// asking the kernel which slots are locked (a system call per slot). `None` if the directory
/// has no statistics file yet.
pub(crate) fn read(dir: &Path, own: Option<&[usize]>) -> Result<Option<Reading>> {
    let path = dir.join(FILE_NAME);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::Error::io("open", &path, e)),
    };
    let pool = map_file(file, &path, false)?;
    let mut reading = Reading::default();
    for (r, w) in reading.totals.0.iter_mut().zip(pool.retired()) {
        *r = w.load(Ordering::Relaxed);
    }
    for i in 0..SLOTS {
        let words = pool.slot(i);
        if words[PID].load(Ordering::Relaxed) == 0 {
            continue; // never claimed: nothing counted (a claim stores the pid before counting)
        }
        let counts = slot_counts(load(words));
        reading.totals.add(&counts);
        let Some(own) = own else { continue };
        let alive =
            own.contains(&i) || sys::byte_is_locked(&pool.file, i as u64).ctx("lock", &path)?;
        if alive {
            reading.live.push(Row {
                pid: words[PID].load(Ordering::Relaxed) as u32,
                started: f64::from_bits(words[STARTED].load(Ordering::Relaxed)),
                last_seen: f64::from_bits(words[LAST_SEEN].load(Ordering::Relaxed)),
                counts,
            });
        }
    }
    Ok(Some(reading))
}

/// Sets every count of the pool to zero (the live handles' too).
pub(crate) fn reset(dir: &Dir) -> Result<()> {
    let path: PathBuf = dir.join(FILE_NAME);
    let pool = map_file(open_file(dir)?, &path, true)?;
    for r in pool.retired() {
        r.store(0, Ordering::Relaxed);
    }
    for i in 0..SLOTS {
        zero_counts(pool.slot(i));
    }
    Ok(())
}
