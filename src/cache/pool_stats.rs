//! The pool's statistics: what every process using a cache directory counted, together
//! ([`Cache::pool_stats`], [`pool_stats`]).

use std::path::Path;

use serde::Serialize;

use super::Cache;
use crate::error::Result;
use crate::files::Dir;
use crate::pool::{self, Counter, Counts};

/// Counters of a process, or of the whole pool (see [`Cache::pool_stats`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &1)?;
/// let _ = cache.get::<i32>("test", "k");
/// let totals = cache.pool_stats()?.totals;
/// assert_eq!((totals.sets, totals.ram_hits, totals.misses), (1, 1, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolCounts {
    /// Lookups answered by a RAM tier.
    pub ram_hits: u64,
    /// Lookups answered by the shared disk tier.
    pub disk_hits: u64,
    /// Lookups answered by the shared tier (Redis).
    pub shared_hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Entries written (`set` and its forms).
    pub sets: u64,
    /// `remove` calls.
    pub removals: u64,
    /// Entries the RAM tiers evicted to make room.
    pub ram_evictions: u64,
    /// Entries evicted from disk to keep the directory within its disk bound.
    pub disk_evictions: u64,
    /// Expired entries dropped (from RAM tiers when found expired, from disk by compaction).
    pub expired: u64,
    /// Expired entries that compactions dropped from disk, giving their space back (the
    /// automatic expiry passes and `clear_expired`; also counted in `expired`).
    pub expired_reclaimed: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Time those compactions took, in seconds.
    pub compaction_seconds: f64,
    /// Failed operations of the shared tier (errors and timeouts).
    pub shared_errors: u64,
    /// Entries the shared tier's writer dropped (its queue full, or the tier down).
    pub shared_drops: u64,
}

impl PoolCounts {
    fn from_counts(c: &Counts) -> Self {
        Self {
            ram_hits: c.get(Counter::RamHit),
            disk_hits: c.get(Counter::DiskHit),
            shared_hits: c.get(Counter::SharedHit),
            misses: c.get(Counter::Miss),
            sets: c.get(Counter::Set),
            removals: c.get(Counter::Removal),
            ram_evictions: c.get(Counter::RamEviction),
            disk_evictions: c.get(Counter::DiskEviction),
            expired: c.get(Counter::Expired),
            expired_reclaimed: c.get(Counter::ExpiredReclaimed),
            compactions: c.get(Counter::Compaction),
            compaction_seconds: c.get(Counter::CompactionMicros) as f64 / 1e6,
            shared_errors: c.get(Counter::SharedError),
            shared_drops: c.get(Counter::SharedDrop),
        }
    }

    /// Lookups answered by any tier.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let _ = cache.get::<i32>("test", "k"); // a RAM hit
    /// let _ = tokcache::Cache::open(dir.path())?.get::<i32>("test", "k"); // a disk hit
    /// let _ = cache.get::<i32>("test", "absent"); // a miss
    /// assert_eq!(cache.pool_stats()?.totals.hits(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn hits(&self) -> u64 {
        self.ram_hits + self.disk_hits + self.shared_hits
    }

    /// Lookups.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let _ = cache.get::<i32>("test", "k"); // a RAM hit
    /// let _ = tokcache::Cache::open(dir.path())?.get::<i32>("test", "k"); // a disk hit
    /// let _ = cache.get::<i32>("test", "absent"); // a miss
    /// assert_eq!(cache.pool_stats()?.totals.lookups(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn lookups(&self) -> u64 {
        self.hits() + self.misses
    }

    /// Lookups, sets and removals.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let _ = cache.get::<i32>("test", "k"); // a RAM hit
    /// let _ = tokcache::Cache::open(dir.path())?.get::<i32>("test", "k"); // a disk hit
    /// let _ = cache.get::<i32>("test", "absent"); // a miss
    /// assert_eq!(cache.pool_stats()?.totals.operations(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn operations(&self) -> u64 {
        self.lookups() + self.sets + self.removals
    }

    /// Hits per lookup, 0 to 1 (0 before any lookup).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// assert_eq!(cache.pool_stats()?.totals.hit_rate(), 0.0); // no lookup yet
    /// cache.set("test", "k", &1)?;
    /// let _ = cache.get::<i32>("test", "k");
    /// let _ = cache.get::<i32>("test", "absent");
    /// assert_eq!(cache.pool_stats()?.totals.hit_rate(), 0.5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn hit_rate(&self) -> f64 {
        match self.lookups() {
            0 => 0.0,
            n => self.hits() as f64 / n as f64,
        }
    }
}

/// One live cache handle of the pool (a process has one per cache it opened, usually one).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &1)?;
/// let pool = cache.pool_stats()?;
/// let me = &pool.processes[0];
/// assert_eq!((me.pid, me.counts.sets), (std::process::id(), 1));
/// assert!(me.started > 0.0 && me.last_seen >= me.started);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProcessStats {
    /// Its process id.
    pub pid: u32,
    /// When it opened the cache (seconds since the Unix epoch).
    pub started: f64,
    /// When it last counted (to about a second; noted every 1024 lookups and sets of a thread).
    pub last_seen: f64,
    /// What it counted.
    pub counts: PoolCounts,
}

/// The counters of every process that used the directory, summed, and its live handles
/// (see [`Cache::pool_stats`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let a = tokcache::Cache::open(dir.path())?;
/// let b = tokcache::Cache::open(dir.path())?;
/// a.set("test", "k", &1)?;
/// b.set("test", "j", &2)?;
/// drop(b); // gone, its counts stay in the totals
/// let pool = a.pool_stats()?;
/// assert_eq!((pool.totals.sets, pool.processes.len()), (2, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// Every count since the directory's statistics began (or were reset), of processes alive
    /// or gone.
    pub totals: PoolCounts,
    /// The handles alive now.
    pub processes: Vec<ProcessStats>,
}

/// Reads the pool statistics of the cache in `dir` without opening it (a monitor does not
/// count as one of the pool's processes). An empty [`PoolStats`] if no process has counted
/// there yet.
///
/// ```
/// # let tmp = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(tmp.path())?;
/// cache.set("test", "k", &1u64)?;
/// let _ = cache.get::<u64>("test", "k");
/// let pool = tokcache::pool_stats(tmp.path())?;
/// assert_eq!((pool.totals.sets, pool.totals.ram_hits), (1, 1));
/// assert_eq!(pool.processes.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`crate::Error::Io`] if the statistics file cannot be read; [`crate::Error::Corrupt`] if
/// it is not one.
pub fn pool_stats(dir: impl AsRef<Path>) -> Result<PoolStats> {
    read(dir.as_ref(), Some(&[]))
}

fn read(dir: &Path, own: Option<&[usize]>) -> Result<PoolStats> {
    let Some(r) = pool::read(dir, own)? else {
        return Ok(PoolStats::default());
    };
    Ok(PoolStats {
        totals: PoolCounts::from_counts(&r.totals),
        processes: r
            .live
            .iter()
            .map(|row| ProcessStats {
                pid: row.pid,
                started: row.started,
                last_seen: row.last_seen,
                counts: PoolCounts::from_counts(&row.counts),
            })
            .collect(),
    })
}

impl Cache {
    /// The counters of every process using this cache's directory, summed, with a row per
    /// live handle: the pool's hit rate, where [`Cache::get_stats`] tells only this handle's.
    /// Each handle counts into a slot of its own in the shared file `tokcache.stats` (no two
    /// processes write to one cache line); a process that exits or is killed keeps its counts
    /// in the totals. A read-only or RAM-only handle counts for itself only.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let a = tokcache::Cache::open(tmp.path())?;
    /// let b = tokcache::Cache::open(tmp.path())?; // another process, typically
    /// a.set("test", "k", &1u64)?;
    /// assert_eq!(b.get::<u64>("test", "k"), Some(1));
    /// assert_eq!(b.get::<u64>("test", "other"), None);
    /// let pool = a.pool_stats()?;
    /// assert_eq!((pool.totals.sets, pool.totals.hits(), pool.totals.misses), (1, 1, 1));
    /// assert_eq!(pool.processes.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`pool_stats`].
    pub fn pool_stats(&self) -> Result<PoolStats> {
        self.read_pool(true)
    }

    /// The pool's totals alone ([`Cache::pool_stats`] without the live handles, which take
    /// a system call per slot to tell): what [`Cache::get_stats`] reports of the pool.
    pub(super) fn pool_totals(&self) -> PoolCounts {
        self.read_pool(false).map(|p| p.totals).unwrap_or_default()
    }

    /// The directory's pool statistics, with the live handles if `live`.
    fn read_pool(&self, live: bool) -> Result<PoolStats> {
        if self.local().store.is_none() {
            return Ok(PoolStats::default()); // RAM only: no directory to read
        }
        let own: Vec<usize> = self.local().pool.index().into_iter().collect();
        read(&self.settings.dir, live.then_some(&own[..]))
    }

    /// Sets every count of the pool to zero, the live handles' too.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Io`] if the statistics file cannot be written.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// cache.reset_pool_stats()?;
    /// assert_eq!(cache.pool_stats()?.totals.sets, 0);
    /// assert_eq!(cache.get_stats().saves, 1); // this handle's own statistics are not the pool's
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reset_pool_stats(&self) -> Result<()> {
        pool::reset(&Dir {
            path: self.settings.dir.clone(),
            mode: self.settings.file_mode,
        })
    }
}
