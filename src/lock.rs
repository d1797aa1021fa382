//! The write lock. Appends, compaction and clearing are serialised across processes by a lock
//! word in the shared control page: taking and releasing it is one atomic instruction each when
//! nobody waits (an `flock` pair costs two system calls, more than the rest of an append).
//!
//! - The word holds the owner's *token* (1..2^31), or 0 when free; bit 31 says that someone may
//!   sleep on it, so the releasing owner must wake one (a futex on the shared page).
//! - Each process that may write holds, for as long as it has the cache open, an
//!   open-file-description lock on byte `token` of `tokcache.lock`. The kernel drops it when the
//!   process dies, however it dies. A waiter that sees one owner hold the word for long checks
//!   that byte: unlocked means the owner is dead, and the waiter takes the word over. A killed
//!   writer costs the next one a few milliseconds, never a lost or stuck cache.
//! - `tokcache.lock` is also `flock`ed (through fs2) while the control page itself is created or
//!   rebuilt, before any word exists; and where the kernel lacks open-file-description locks,
//!   every write takes that `flock` instead of the word.
//!
//! - One compaction at a time: whoever builds the next index holds an `flock` of
//!   `compact.lock` (through fs2) for the whole of it, most of which runs without the write lock.
//!
//! fs2 is called by full path because std's own `File::lock*` methods of the same names would
//! otherwise take precedence.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::fork::Held;
use crate::sys;

pub(crate) const FILE_NAME: &str = "tokcache.lock";
pub(crate) const COMPACT_FILE_NAME: &str = "compact.lock";

/// Bit of the word set by a process about to sleep on it.
const WAITING: u32 = 1 << 31;
/// Failed attempts spent spinning before sleeping (an append holds the word about a microsecond).
const SPINS: u32 = 64;
/// Longest sleep between looks at the word (a wake-up normally comes first).
const NAP: Duration = Duration::from_millis(5);
/// How long one owner must hold the word before a waiter checks whether it is still alive.
const SUSPECT_AFTER: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct LockFile {
    /// Registered so that a forked child lets go of this process's locks (before `file` closes).
    _held: Held,
    file: File,
    path: PathBuf,
    /// The byte this process holds in the lock file; `None` where the kernel cannot lock bytes
    /// per open file description (every write then `flock`s).
    token: Option<u32>,
}

/// Holds the write lock until dropped.
pub(crate) enum Locked<'a> {
    File(&'a LockFile),
    Word(&'a AtomicU32),
}

impl LockFile {
    pub(crate) fn open(dir: &Path, mode: u32) -> Result<Self> {
        let (file, path) = open_lock_file(dir, FILE_NAME, mode)?;
        let token = claim_token(&file, &path)?;
        Ok(Self {
            _held: Held::register(&file),
            file,
            path,
            token,
        })
    }

    /// Whether appends in this directory may go through a writable mapping.
    pub(crate) fn allows_mapped_writes(&self) -> bool {
        sys::mapped_writes_are_safe(&self.file)
    }

    /// Blocks until this process holds the lock file's `flock` (creating the control page).
    pub(crate) fn exclusive(&self) -> Result<Locked<'_>> {
        fs2::FileExt::lock_exclusive(&self.file).ctx("lock", &self.path)?;
        Ok(Locked::File(self))
    }

    /// Blocks until this process holds the write lock whose word is `word`.
    pub(crate) fn writer<'a>(&'a self, word: &'a AtomicU32) -> Result<Locked<'a>> {
        let Some(token) = self.token else {
            return self.exclusive();
        };
        let mut mine = token;
        let mut spins = 0;
        let mut watched: Option<(u32, Instant)> = None;
        loop {
            let Err(seen) = word.compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
            else {
                return Ok(Locked::Word(word));
            };
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let owner = seen & !WAITING;
            if seen & WAITING == 0
                && word
                    .compare_exchange(seen, seen | WAITING, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            match watched {
                Some((o, since)) if o == owner && since.elapsed() >= SUSPECT_AFTER => {
                    // Our own token in the word cannot be judged by its byte, which we hold:
                    // a dead process that drew the same token (a 2^-31 chance), or a forked
                    // twin where fork() could not be watched (fork.rs). Wait for it.
                    if owner != token && !self.alive(owner)? {
                        let taken = word.compare_exchange(
                            seen | WAITING,
                            token | WAITING,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        );
                        if taken.is_ok() {
                            log::warn!(
                                "{}: took the write lock over from a process that died holding it",
                                self.path.display()
                            );
                            return Ok(Locked::Word(word));
                        }
                    }
                    watched = Some((owner, Instant::now()));
                }
                Some((o, _)) if o == owner => {}
                _ => watched = Some((owner, Instant::now())),
            }
            sys::futex_wait(word, seen | WAITING, NAP);
            // Others may still sleep: whoever takes the word after sleeping wakes the next.
            mine = token | WAITING;
        }
    }

    /// Whether the process with `token` still has the cache open: it holds that byte.
    fn alive(&self, token: u32) -> Result<bool> {
        sys::byte_is_locked(&self.file, u64::from(token)).ctx("check lock owner", &self.path)
    }
}

/// An `flock` held by one process (and thread: each attempt opens its own file description)
/// for the whole of a long task: the compaction (`compact.lock`), the migration of the
/// original's files (the migration marker, legacy.rs). Released when dropped, or by the kernel
/// when the process dies.
#[derive(Debug)]
pub(crate) struct FileLock {
    _held: Held,
    file: File,
    path: PathBuf,
}

/// The compaction lock.
pub(crate) type CompactionLock = FileLock;

impl FileLock {
    /// Takes the compaction lock of `dir`: `None` if another compaction holds it and `wait` is
    /// false.
    pub(crate) fn take(dir: &Path, mode: u32, wait: bool) -> Result<Option<Self>> {
        let (file, path) = open_lock_file(dir, COMPACT_FILE_NAME, mode)?;
        Self::lock(file, path, wait)
    }

    /// Takes the lock of an existing file `path` without waiting: `None` if another holds it
    /// or the file is gone.
    pub(crate) fn try_existing(path: &Path) -> Result<Option<Self>> {
        let file = match crate::files::file_options(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::Error::io("open", path, e)),
        };
        Self::lock(file, path.to_path_buf(), false)
    }

    fn lock(file: File, path: PathBuf, wait: bool) -> Result<Option<Self>> {
        if wait {
            fs2::FileExt::lock_exclusive(&file).ctx("lock", &path)?;
        } else if let Err(e) = fs2::FileExt::try_lock_exclusive(&file) {
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
            {
                return Ok(None);
            }
            return Err(crate::Error::io("lock", &path, e));
        }
        Ok(Some(Self {
            _held: Held::register(&file),
            file,
            path,
        }))
    }

    /// Whether the locked file is still the one at its path (not removed, nor replaced, by
    /// a holder that finished before this one took the lock).
    pub(crate) fn still_linked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Err(e) = fs2::FileExt::unlock(&self.file) {
            log::warn!("cannot unlock {}: {e}", self.path.display());
        }
    }
}

/// Opens (creating if needed, never through a symlink) a file that is only ever locked.
fn open_lock_file(dir: &Path, name: &str, mode: u32) -> Result<(File, PathBuf)> {
    let path = dir.join(name);
    let file = crate::files::file_options(mode)
        .create(true)
        .open(&path)
        .ctx("open lock file", &path)?;
    Ok((file, path))
}

/// Picks a free token and locks its byte. `None` if the kernel has no open-file-description
/// locks (before Linux 3.15, or a file system without them).
fn claim_token(file: &File, path: &Path) -> Result<Option<u32>> {
    let mut seed = crate::keys::random_seed();
    for _ in 0..64 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let token = ((seed >> 33) as u32).max(1);
        match sys::lock_byte(file, u64::from(token)) {
            Ok(true) => return Ok(Some(token)),
            Ok(false) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                log::debug!("{}: no byte locks ({e}); writes use flock", path.display());
                return Ok(None);
            }
            Err(e) => return Err(crate::Error::io("lock owner byte", path, e)),
        }
    }
    Ok(None)
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        match self {
            Locked::File(lock) => {
                if let Err(e) = fs2::FileExt::unlock(&lock.file) {
                    log::warn!("cannot unlock {}: {e}", lock.path.display());
                }
            }
            Locked::Word(word) => {
                if word.swap(0, Ordering::Release) & WAITING != 0 {
                    sys::futex_wake(word);
                }
            }
        }
    }
}

/// Blocks until this process holds an exclusive `flock` of `file` (released when it is
/// closed): the machine-crash shadow's lock (`crashsim.rs`).
#[cfg(feature = "killpoints")]
pub(crate) fn hold_exclusive(file: &File) -> std::io::Result<()> {
    fs2::FileExt::lock_exclusive(file)
}
