//! Fork detection. A process that opened a cache and then forks (a prefork server, Python's
//! `multiprocessing` with `fork`, gunicorn `--preload`) gives each child a copy of its state:
//! the same lock identity, mutexes that threads of the parent may have held at that moment,
//! a compaction thread the child does not have. A child must not use any of it.
//!
//! - The number of forks between the program's start and this process ([`generation`]) is
//!   counted by a `pthread_atfork` child handler: a cache compares it with the one it was
//!   opened at (one relaxed load per call) and, in a child, builds its per-process state anew.
//! - The lock files a process holds are registered here ([`Held`]); the child handler points
//!   its copies of them at `/dev/null`, so that a parent's locks (its write-lock byte, the
//!   compaction lock) are held by the parent alone: when the parent dies they are released,
//!   whatever its children do, and a child never passes for the parent.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// Lock files a process can register; past that (hundreds of caches open in one process) a
/// lock file is not detached in a child, which then shares the parent's lock until it exits.
const SLOTS: usize = 256;

static FORKS: AtomicU64 = AtomicU64::new(0);
static HELD: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Forks between the program's start and this process (0 in the process that started it).
#[inline]
pub(crate) fn generation() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Installs the child handler (once per program).
pub(crate) fn watch() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        if let Err(e) = crate::sys::on_fork_child(after_fork) {
            log::warn!("cannot watch for fork(): {e}; open caches after forking");
        }
    });
}

/// Runs in a new child, before `fork` returns there. Async-signal-safe: atomics and
/// [`crate::sys::detach_fds`].
extern "C" fn after_fork() {
    let held = HELD
        .iter()
        .map(|slot| slot.swap(-1, Ordering::Relaxed))
        .filter(|&fd| fd >= 0);
    crate::sys::detach_fds(held);
    FORKS.fetch_add(1, Ordering::Release);
}

/// A lock file registered as held by this process; unregistered when dropped (before the file
/// it belongs to is closed: declare it before the file in a struct).
#[derive(Debug)]
pub(crate) struct Held(Option<(usize, RawFd)>);

impl Held {
    pub(crate) fn register(file: &impl AsRawFd) -> Self {
        watch();
        let fd: RawFd = file.as_raw_fd();
        let slot = HELD.iter().position(|s| {
            s.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        if slot.is_none() {
            log::debug!("more than {SLOTS} lock files open: a forked child keeps fd {fd}");
        }
        Self(slot.map(|i| (i, fd)))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Only if it is still ours: in a forked child the slot was emptied, and may now hold
        // another descriptor (never this number, which stays open there, on /dev/null).
        if let Some((i, fd)) = self.0 {
            let _ = HELD[i].compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}
