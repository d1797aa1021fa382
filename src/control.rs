//! The control page `tokcache.ctl`: magic, format version, hash seed, the atomics every
//! process follows (index generation and committed length of the active log), and the write
//! lock's word (see `lock.rs`).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::files::Dir;
use crate::le;
use crate::map::SharedPage;

pub(crate) const FILE_NAME: &str = "tokcache.ctl";
pub(crate) const PAGE_LEN: usize = 4096;
const MAGIC: &[u8; 8] = b"TOKCCTL1";
/// Version 2 added the write lock word.
const VERSION: u32 = 2;

const OFF_VERSION: usize = 8;
const OFF_PAGE_LEN: usize = 12;
const OFF_SEED: usize = 16;
const OFF_GENERATION: usize = 24;
const OFF_COMMITTED: usize = 32;
const OFF_LOCK: usize = 40;
/// The current log's segment id (0: not known, a page written before it was kept).
const OFF_LOG: usize = 44;
/// How many times a compaction was about to trim a log (see [`Control::announce_trim`]).
const OFF_TRIMS: usize = 48;
/// When the last automatic expiry pass began (f64 seconds as bits; 0: none yet).
const OFF_EXPIRY: usize = 56;
/// The directory's disk bound in bytes (0: not set yet; `u64::MAX`: none).
const OFF_DISK_BOUND: usize = 64;
/// The bound of a directory that nobody gave one: 1 GiB, as diskcache's `size_limit`.
pub(crate) const DEFAULT_DISK_BOUND: u64 = 1 << 30;
/// The smallest bound: below it, the cache's fixed files (1.3 MiB) and one log step leave no
/// room for entries.
pub(crate) const MIN_DISK_BOUND: u64 = 8 << 20;

/// A consistent reading of the moving fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub generation: u64,
    pub committed: u64,
}

#[derive(Debug)]
pub(crate) struct Control {
    page: SharedPage,
    seed: u64,
}

impl Control {
    /// Writes a fresh page (nothing committed) to `path` atomically. `log`: the generation's
    /// log, 0 if not known.
    pub(crate) fn create(dir: &Dir, seed: u64, generation: u64, log: u32) -> Result<()> {
        let mut page = vec![0u8; PAGE_LEN];
        page[..8].copy_from_slice(MAGIC);
        le::put(&mut page, OFF_VERSION, VERSION.to_le_bytes());
        le::put(&mut page, OFF_PAGE_LEN, (PAGE_LEN as u32).to_le_bytes());
        le::put(&mut page, OFF_SEED, seed.to_le_bytes());
        le::put(&mut page, OFF_GENERATION, generation.to_le_bytes());
        le::put(&mut page, OFF_LOG, log.to_le_bytes());
        dir.write_file(FILE_NAME, &page)
    }

    /// Maps and checks an existing page.
    pub(crate) fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ctx("open control page", path)?;
        let len = file.metadata().ctx("stat control page", path)?.len();
        if len != PAGE_LEN as u64 {
            return Err(Error::corrupt(
                path,
                format!("control page is {len} bytes, not {PAGE_LEN}"),
            ));
        }
        let page = SharedPage::new(&file, PAGE_LEN, OFF_GENERATION, writable)
            .ctx("map control page", path)?;
        let b = page.header();
        if &b[..8] != MAGIC {
            return Err(Error::corrupt(
                path,
                "bad magic: not a tokcache control page",
            ));
        }
        let version = u32::from_le_bytes(le::get(b, OFF_VERSION));
        if version != VERSION {
            // No checksum says whether this is damage or a newer release: the store tells by
            // the indexes (see `index::check_not_newer`) before it rebuilds the page.
            return Err(Error::corrupt(
                path,
                format!("format version {version}, this build reads {VERSION}"),
            ));
        }
        let seed = u64::from_le_bytes(le::get(b, OFF_SEED));
        debug_assert_eq!(page.len(), PAGE_LEN);
        Ok(Self { page, seed })
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Reads generation and committed length so that the length belongs to the generation
    /// returned (writers publish a new generation after resetting the length).
    pub(crate) fn state(&self) -> State {
        loop {
            let generation = self.page.atomic(OFF_GENERATION).load(Ordering::Acquire);
            let committed = self.page.atomic(OFF_COMMITTED).load(Ordering::Acquire);
            if self.page.atomic(OFF_GENERATION).load(Ordering::Acquire) == generation {
                return State {
                    generation,
                    committed,
                };
            }
        }
    }

    /// Publishes a new committed length. Caller holds the write lock.
    pub(crate) fn publish_committed(&self, committed: u64) {
        if self.page.is_writable() {
            self.page
                .atomic(OFF_COMMITTED)
                .store(committed, Ordering::Release);
        }
    }

    /// Publishes a new generation whose log, segment `log`, holds `committed` bytes of
    /// records. Caller holds the write lock.
    pub(crate) fn publish_generation(&self, generation: u64, committed: u64, log: u32) {
        if !self.page.is_writable() {
            return;
        }
        self.page.atomic_u32(OFF_LOG).store(log, Ordering::Release);
        self.page
            .atomic(OFF_COMMITTED)
            .store(committed, Ordering::Release);
        self.page
            .atomic(OFF_GENERATION)
            .store(generation, Ordering::Release);
    }

    /// Says, before a compaction shrinks a log, that it will: every writer then checks the
    /// log's length again before it appends (see [`Control::trims`]). Caller holds the write
    /// lock. A compaction killed after this and before the trim costs writers one `fstat`.
    pub(crate) fn announce_trim(&self) {
        if self.page.is_writable() {
            self.page.atomic(OFF_TRIMS).fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many trims were announced. A writer that learnt the log's length under the write
    /// lock while this read `n` may trust that length for as long as it still reads `n`:
    /// trims are announced, under the lock, before they are made.
    pub(crate) fn trims(&self) -> u64 {
        self.page.atomic(OFF_TRIMS).load(Ordering::Acquire)
    }

    /// Whether an automatic expiry pass is due at `now` (one began `every` seconds ago or
    /// earlier), without claiming it. A page that has no pass yet starts counting from `now`.
    pub(crate) fn expiry_due(&self, now: f64, every: f64) -> bool {
        let last = f64::from_bits(self.page.atomic(OFF_EXPIRY).load(Ordering::Acquire));
        if last <= 0.0 {
            self.claim_expiry_pass(now, every); // sets the first time; claims nothing
            return false;
        }
        now - last >= every
    }

    /// Claims the automatic expiry pass due at `now`, if one is: `true` for the one process
    /// that moves the page's time of the last pass to `now`. A page that has none yet gets
    /// `now` (the first pass comes `every` later: a new cache has nothing expired).
    pub(crate) fn claim_expiry_pass(&self, now: f64, every: f64) -> bool {
        if !self.page.is_writable() {
            return false;
        }
        let word = self.page.atomic(OFF_EXPIRY);
        let seen = word.load(Ordering::Acquire);
        let last = f64::from_bits(seen);
        let claim = |first: bool| {
            word.compare_exchange(seen, now.to_bits(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                && !first
        };
        if last <= 0.0 || !last.is_finite() || last > now + every {
            // None yet, or a time from another clock (a clock moved back): start from now.
            return claim(true);
        }
        now - last >= every && claim(false)
    }

    /// The directory's disk bound: the one last given explicitly by a process that opened the
    /// cache, else [`DEFAULT_DISK_BOUND`]; `None`: unbounded.
    pub(crate) fn disk_bound(&self) -> Option<u64> {
        match self.page.atomic(OFF_DISK_BOUND).load(Ordering::Relaxed) {
            0 => Some(DEFAULT_DISK_BOUND),
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// Sets the directory's disk bound (`None`: none) for every process that uses it, or, with
    /// `only_if_unset`, only if none was set yet (the default of a process that was given none).
    pub(crate) fn set_disk_bound(&self, bound: Option<u64>, only_if_unset: bool) {
        if !self.page.is_writable() {
            return;
        }
        let word = self.page.atomic(OFF_DISK_BOUND);
        let value = bound.filter(|&n| n > 0).unwrap_or(u64::MAX);
        if only_if_unset {
            let _ = word.compare_exchange(0, value, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            word.store(value, Ordering::Relaxed);
        }
    }

    /// The current log's segment id, if the page records it: no published segment has a
    /// higher one (a rebuild leaves out those that do: files of a compaction that died).
    pub(crate) fn log_id(&self) -> Option<u32> {
        Some(self.page.atomic_u32(OFF_LOG).load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// The write lock's word, for writable pages only (`None` on a read-only mapping).
    pub(crate) fn lock_word(&self) -> Option<&AtomicU32> {
        self.page
            .is_writable()
            .then(|| self.page.atomic_u32(OFF_LOCK))
    }

    pub(crate) fn flush(&self, path: &Path) -> Result<()> {
        #[cfg(feature = "killpoints")]
        if let Ok(file) = std::fs::File::open(path) {
            crate::crashsim::file_synced(&file);
        }
        self.page.flush().ctx("sync control page", path)
    }
}
