//! What each process has of a cache for itself: the disk tier's files, maps and locks, the RAM
//! tier, the compaction thread, the in-flight computations. A forked child gets a copy of its
//! parent's; it must not use it (fork.rs), so a [`Cache`](super::Cache) keeps a chain of
//! them, one per process it has lived in, and uses the one of the process it runs in.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::Storage;
use crate::fork;
use crate::keys::HashKeyed;
use crate::pool;
use crate::ram::RamTier;
use crate::shared::Tier;
use crate::store::Store;

/// One mutex per key being computed by `get_or_insert_with`.
pub(super) type Flights = Mutex<HashKeyed<Arc<Mutex<()>>>>;

pub(super) struct Process {
    /// The fork generation ([`fork::generation`]) of the process this state belongs to.
    forks: u64,
    pub(super) store: Option<Arc<Store>>,
    /// Shared with the compaction thread, which tells it of keys other processes changed.
    pub(super) ram: Arc<RamTier>,
    /// The shared tier (Redis), with its connections and writer thread.
    pub(super) shared: Option<Tier>,
    /// The compaction thread, shared with it.
    compactor: Arc<Mutex<Compactor>>,
    /// Whether writes compact on a thread of their own.
    background: bool,
    /// One mutex per key being computed by `get_or_insert_with` (per key, not striped, so that
    /// a computation may itself call `get_or_insert_with` for other keys).
    pub(super) flights: Flights,
    /// The state of a child process forked from this one, made there when first needed.
    child: OnceLock<Box<Process>>,
    /// This handle's slot of the pool statistics (shared with the compaction thread).
    pub(super) pool: Arc<pool::Slot>,
}

/// A cache's compaction thread: its handle, until joined, whether it runs, and whether a write
/// asked for a compaction while it ran. It then compacts again before it ends: the write that
/// filled the tail just as it finished would otherwise be left without one (if no write
/// follows, as at the end of a bulk load, the next process to open the cache scans that tail).
#[derive(Default)]
struct Compactor {
    thread: Option<std::thread::JoinHandle<()>>,
    running: bool,
    asked_again: bool,
}

/// Drops from the RAM tier what another process changed (`None`: anything may have changed).
pub(super) fn invalidate(ram: &RamTier, changed: Option<u64>) {
    match changed {
        Some(h) => ram.remove(h),
        None => ram.clear(),
    }
}

/// The compaction a write asked for; a failure leaves the old generation and is retried later.
fn compact_full_log(store: &Store) {
    if let Err(e) = store.compact_when_full(false) {
        log::warn!("compaction failed, will retry: {e}");
    }
}

impl Process {
    pub(super) fn new(
        store: Option<Arc<Store>>,
        ram: Arc<RamTier>,
        shared: Option<Tier>,
        background: bool,
        pool: Arc<pool::Slot>,
    ) -> Self {
        fork::watch();
        Self {
            forks: fork::generation(),
            store,
            ram,
            shared,
            compactor: Arc::default(),
            background,
            flights: Mutex::default(),
            child: OnceLock::new(),
            pool,
        }
    }

    /// Counts entries the RAM tier evicted.
    pub(super) fn count_ram_evictions(&self, n: u64) {
        if n > 0 {
            self.pool.add_n(pool::Counter::RamEviction, n);
        }
    }

    /// How this process keeps the cache's entries, from what its disk tier is.
    pub(super) fn storage(&self) -> Storage {
        match &self.store {
            Some(s) if s.is_writable() => Storage::Disk,
            Some(_) => Storage::ReadOnly,
            None => Storage::RamOnly,
        }
    }

    /// The disk tier, if this process may write to it.
    pub(super) fn writable_store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref().filter(|s| s.is_writable())
    }

    /// This process's state: `self` in the process that made it, else the state of the child
    /// process it was copied into, made by `open` the first time (once, whatever the threads).
    #[inline]
    pub(super) fn current(&self, open: impl Fn() -> Process) -> &Process {
        let forks = fork::generation();
        if self.forks == forks {
            return self;
        }
        self.in_child(forks, open)
    }

    #[cold]
    fn in_child(&self, forks: u64, open: impl Fn() -> Process) -> &Process {
        let mut p = self;
        while p.forks != forks {
            p = p.child.get_or_init(|| Box::new(open()));
        }
        p
    }

    /// Runs the compaction a write asked for: on the compaction thread (started unless one
    /// runs), or here when the cache compacts inline or no thread can be started.
    pub(super) fn compact_when_full(&self, store: &Arc<Store>) {
        if !self.background {
            return compact_full_log(store);
        }
        let mut c = self.compactor.lock();
        if c.running {
            c.asked_again = true;
            return;
        }
        if let Some(done) = c.thread.take() {
            let _ = done.join();
        }
        let (s, state) = (Arc::clone(store), Arc::clone(&self.compactor));
        let spawned = std::thread::Builder::new()
            .name("tokcache-compact".into())
            .spawn(move || {
                loop {
                    compact_full_log(&s);
                    let mut c = state.lock();
                    if !std::mem::take(&mut c.asked_again) {
                        c.running = false;
                        break;
                    }
                }
            });
        match spawned {
            Ok(t) => {
                c.thread = Some(t);
                c.running = true;
            }
            Err(e) => {
                drop(c);
                log::debug!("compacting inline: {e}");
                compact_full_log(store);
            }
        }
    }
}

impl Drop for Process {
    /// In the process that made it: waits for a compaction under way, so that a short-lived
    /// process finishes what it started (a process killed meanwhile leaves files the next
    /// compaction removes), and for the shared tier's writer to write what is queued. In a
    /// forked child, whose copy names threads it does not have and may hold mutexes locked by
    /// the parent's threads, the compaction state and the shared tier are left as they are
    /// (leaked); the rest is memory and descriptors of the child's own, freed as usual.
    fn drop(&mut self) {
        if self.forks != fork::generation() {
            std::mem::forget(Arc::clone(&self.compactor));
            #[allow(clippy::forget_non_drop)] // without the `redis` feature: nothing to forget
            std::mem::forget(self.shared.take());
            return;
        }
        let thread = self.compactor.lock().thread.take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}
