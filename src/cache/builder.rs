//! [`CacheBuilder`]: the settings of a cache, and opening it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Cache;
use super::process::{Process, invalidate};
use crate::clock::{Clock, SystemClock};
use crate::control::MIN_DISK_BOUND;
use crate::error::{Error, Result};
use crate::files::Dir;
use crate::keys::random_seed;
use crate::legacy;
use crate::pool;
use crate::ram::RamTier;
use crate::shared::{self, Tier};
use crate::store::{self, Store};
use crate::tally::Tally;

/// Builds a [`Cache`]. Every setting has a default; see each method.
///
/// ```
/// use std::time::Duration;
/// use tokcache::{Cache, Storage};
/// # let tmp = tempfile::tempdir()?;
/// let cache = Cache::builder(tmp.path().join("cache"))
///     .max_ram_entries(10_000)
///     .ttl(Duration::from_secs(7 * 24 * 3600))
///     .file_mode(0o660) // a pool running as several users of one group
///     .open()?;
/// assert_eq!(cache.storage(), Storage::Disk);
///
/// // A directory that cannot be used is an error, or, by name, a cache in RAM only.
/// let file = tmp.path().join("a-file");
/// std::fs::write(&file, "")?;
/// assert!(Cache::builder(&file).open().is_err());
/// let (ram_only, why) = Cache::builder(&file).open_or_ram_only();
/// assert_eq!(ram_only.storage(), Storage::RamOnly);
/// assert!(why.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct CacheBuilder {
    pub(super) dir: PathBuf,
    pub(super) max_ram_entries: usize,
    pub(super) max_ram_bytes: usize,
    /// The TTL, or why the one asked for is not one.
    pub(super) ttl: std::result::Result<Duration, String>,
    pub(super) file_mode: u32,
    pub(super) compact_records: u64,
    pub(super) compact_bytes: u64,
    pub(super) gc_min_dead: u64,
    /// The disk bound given (`Some(0)`: none); `None`: the directory's.
    pub(super) max_disk_bytes: Option<u64>,
    pub(super) background: bool,
    /// Whether this handle counts into the directory's pool statistics.
    pub(super) pool: bool,
    pub(super) clock: Arc<dyn Clock>,
    /// The shared tier's settings; no nodes: none.
    pub(super) shared: shared::Settings,
}

impl CacheBuilder {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_ram_entries: 1000,
            max_ram_bytes: 16 << 20,
            ttl: Ok(Duration::from_secs(24 * 3600)),
            file_mode: 0o600,
            compact_records: 32 * 1024,
            compact_bytes: 64 << 20,
            gc_min_dead: 16 << 20,
            max_disk_bytes: None,
            background: true,
            pool: true,
            clock: Arc::new(SystemClock),
            shared: shared::Settings::new(Vec::new(), false),
        }
    }

    /// Entries kept decoded in RAM (default 1000, as the original). 0 disables the RAM tier.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path()).max_ram_entries(2).open()?;
    /// for k in ["a", "b", "c"] {
    ///     cache.set("test", k, &1)?;
    /// }
    /// assert_eq!(cache.get_stats().ram_entries, 2); // the least recently used one left RAM
    /// assert_eq!(cache.get::<i32>("test", "a"), Some(1)); // and is read from disk
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_ram_entries(mut self, n: usize) -> Self {
        self.max_ram_entries = n;
        self
    }

    /// Bytes the RAM tier may hold, keys and values included (default 16 MiB); an entry over
    /// an eighth of it (over all of it below 64 entries) is not kept in RAM. Keys over 4 KiB
    /// whose records are on disk are never copied into RAM (a hit reads them from the shared
    /// mapping), so a process's private memory for its RAM tier stays bounded whatever the
    /// keys' length. A RAM-only or read-only cache keeps what it cannot write within this bound.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path()).max_ram_bytes(1 << 20).open()?;
    /// cache.set("test", "big", &"x".repeat(512 << 10))?; // over an eighth of 1 MiB: disk only
    /// cache.set("test", "small", &1)?;
    /// assert_eq!(cache.get_stats().ram_entries, 1);
    /// assert_eq!(cache.get::<String>("test", "big").map(|s| s.len()), Some(512 << 10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_ram_bytes(mut self, n: usize) -> Self {
        self.max_ram_bytes = n;
        self
    }

    /// Age after which an entry is a miss (default 24 hours): a lookup misses an entry older
    /// than this, as the original's `age > ttl`. Fractions of a second work; with zero, an
    /// entry is a miss once the clock has moved past its timestamp.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// # let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(tokcache::ManualClock::at(1.9e9));
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .ttl(Duration::from_millis(1500))
    ///     .clock(clock.clone())
    ///     .open()?;
    /// cache.set("test", "k", &1)?;
    /// clock.advance(1.5);
    /// assert_eq!(cache.get::<i32>("test", "k"), Some(1)); // 1.5 s old: not older than the TTL
    /// clock.advance(0.01);
    /// assert_eq!(cache.get::<i32>("test", "k"), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Ok(ttl);
        self
    }

    /// The original's `cache_ttl_hours`, fractional hours allowed. A negative, NaN or infinite
    /// number (or one too large for a [`Duration`]) makes [`CacheBuilder::open`] fail.
    ///
    /// ```
    /// use tokcache::{Cache, Error};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::builder(dir.path()).ttl_hours(0.5).open()?; // 30 minutes
    /// cache.set("test", "k", &1)?;
    /// assert_eq!(cache.get::<i32>("test", "k"), Some(1));
    /// assert!(matches!(
    ///     Cache::builder(dir.path()).ttl_hours(f64::NAN).open(),
    ///     Err(Error::InvalidSetting { name: "ttl", .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ttl_hours(mut self, hours: f64) -> Self {
        self.ttl = if hours.is_finite() && hours >= 0.0 {
            Duration::try_from_secs_f64(hours * 3600.0).map_err(|e| format!("{hours} h: {e}"))
        } else {
            Err(format!(
                "{hours} h is not a TTL (a finite number of hours >= 0)"
            ))
        };
        self
    }

    /// Permission bits of new files before the umask (default `0o600`: the keys are users'
    /// prompts, so other users are kept out). A directory the cache creates gets the same
    /// bits plus search (`x`) where reading is allowed: `0o600` gives `0o700`, `0o660` (a pool
    /// whose processes run as several users of one group) gives `0o770`.
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// # let tmp = tempfile::tempdir()?;
    /// let dir = tmp.path().join("shared");
    /// let _cache = tokcache::Cache::builder(&dir).file_mode(0o660).open()?;
    /// let mode = std::fs::metadata(dir.join("tokcache.ctl"))?.permissions().mode();
    /// assert_eq!(mode & 0o007, 0); // never more than asked (the umask may take more away)
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = mode & 0o777;
        self
    }

    /// Index the records appended since the last compaction when there are this many (default
    /// 32768): this bounds the records a process scans when it opens the cache. A large cache
    /// writes them to a small recent index over its full index, and rewrites the full index
    /// only when the recent one reaches 1/32 of its entries (docs/format.md, "Recent or full").
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .compact_after_records(100)
    ///     .compact_in_background(false)
    ///     .open()?;
    /// for i in 0..250 {
    ///     cache.set("test", &i.to_string(), &i)?;
    /// }
    /// let stats = cache.get_stats();
    /// assert!(stats.index_generation >= 2); // two compactions went by
    /// assert!(stats.tail_records < 100); // a new process scans fewer than 100 records
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact_after_records(mut self, n: u64) -> Self {
        self.compact_records = n.max(1);
        self
    }

    /// Rebuild the index when the active segment reaches this many bytes (default 64 MiB).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .compact_after_bytes(64 << 10)
    ///     .compact_in_background(false)
    ///     .open()?;
    /// for i in 0..100 {
    ///     cache.set("test", &i.to_string(), &"x".repeat(1000))?; // 100 KB in all
    /// }
    /// assert!(cache.get_stats().index_generation >= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact_after_bytes(mut self, n: u64) -> Self {
        self.compact_bytes = n.max(1);
        self
    }

    /// Rewrite a segment during compaction once it has at least this many dead bytes and
    /// they are at least half of it (default 16 MiB).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .rewrite_segments_with_dead_bytes(0) // reclaim any segment that is mostly dead
    ///     .open()?;
    /// cache.set("test", "k", &"x".repeat(10_000))?;
    /// cache.compact()?;
    /// cache.remove("test", "k")?;
    /// cache.compact()?;
    /// assert_eq!(cache.get_stats().live_bytes, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rewrite_segments_with_dead_bytes(mut self, n: u64) -> Self {
        self.gc_min_dead = n;
        self
    }

    /// Bound the bytes the cache directory takes on disk (segments, indexes and the cache's
    /// other files, as the file system counts their blocks); 0: no bound. One bound holds per
    /// directory: the last process to open the cache with this setting sets it for every
    /// process; a process that does not set it uses the directory's, and the first one to open
    /// a directory without one sets the default, 1 GiB ([`crate::DEFAULT_MAX_DISK_BYTES`]).
    /// Over the bound, compactions evict the oldest entries that were not read since they
    /// were written or last kept (docs/format.md, "Eviction"); the directory stays within
    /// about 1.1 times it. A bound under 8 MiB is taken as 8 MiB.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path()).max_disk_bytes(64 << 20).open()?;
    /// assert_eq!(cache.get_stats().max_disk_bytes, Some(64 << 20));
    /// // Another process that gives none uses the directory's bound.
    /// let other = tokcache::Cache::open(dir.path())?;
    /// assert_eq!(other.get_stats().max_disk_bytes, Some(64 << 20));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_disk_bytes(mut self, n: u64) -> Self {
        self.max_disk_bytes = Some(n);
        self
    }

    /// Run the compactions that writes start on a thread of their own (default `true`), so
    /// that no `set` waits for one, unless writes outrun compaction by a whole threshold (then
    /// the `set` that finds the log half again past it waits). `false`: the `set` that fills the
    /// log compacts before it returns. Dropping the cache waits for a compaction under way.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .compact_after_records(10)
    ///     .compact_in_background(false) // the set that fills the log compacts, then returns
    ///     .open()?;
    /// for i in 0..10 {
    ///     cache.set("test", &i.to_string(), &i)?;
    /// }
    /// assert_eq!(cache.get_stats().index_generation, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact_in_background(mut self, yes: bool) -> Self {
        self.background = yes;
        self
    }

    /// Whether this handle's lookups and writes count in the directory's pool statistics
    /// ([`Cache::pool_stats`]; default `true`). A monitor that only reads them (`tokcache
    /// stats`, `tokcache top`) turns it off, so that it does not show as one of the pool's
    /// processes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let worker = tokcache::Cache::open(dir.path())?;
    /// let monitor = tokcache::Cache::builder(dir.path()).count_in_pool(false).open()?;
    /// worker.set("test", "k", &1)?;
    /// let _ = monitor.get::<i32>("test", "k"); // not counted in the pool
    /// let pool = monitor.pool_stats()?;
    /// assert_eq!((pool.processes.len(), pool.totals.lookups()), (1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn count_in_pool(mut self, yes: bool) -> Self {
        self.pool = yes;
        self
    }

    /// The clock used for timestamps and expiry (default: the system clock).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tokcache::{Cache, ManualClock};
    /// # let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::at(1.9e9));
    /// let cache = Cache::builder(dir.path())
    ///     .ttl(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .open()?;
    /// cache.set("test", "k", &1)?;
    /// clock.advance(61.0);
    /// assert_eq!(cache.get::<i32>("test", "k"), None); // expired
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A shared tier on the Redis server at `url` (`redis://[user:password@]host:port/db`;
    /// `rediss://` for TLS, the server's certificate checked against the system's roots or
    /// `SSL_CERT_FILE`), below the local tiers: see docs/redis.md. A comma-separated list is
    /// the nodes of a Redis Cluster, as [`CacheBuilder::redis_cluster`] takes them (the form
    /// of `TOKCACHE_REDIS` and the CLI's `--redis`). Nothing connects before the first use: a
    /// server that is down at open is only a shared tier that misses. An empty `url`: none.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// // Nothing connects yet: a server that is down is a shared tier that misses.
    /// let cache = tokcache::Cache::builder(dir.path()).redis("redis://127.0.0.1:1/0").open()?;
    /// assert_eq!(cache.get::<i32>("test", "k"), None);
    /// assert!(cache.get_stats().shared.is_some());
    /// assert!(tokcache::Cache::builder(dir.path()).redis("http://nope").check().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: &str) -> Self {
        let parsed = shared::Settings::parse(url);
        self.shared.nodes = parsed.nodes;
        self.shared.cluster = parsed.cluster;
        self
    }

    /// A shared tier on a Redis Cluster: `nodes` are some of its nodes' URLs (one is enough);
    /// the rest are found from them.
    ///
    /// ```
    /// let builder = tokcache::Cache::builder("temp")
    ///     .redis_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
    /// assert!(builder.check().is_ok()); // nothing connects before the first use
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_cluster<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.shared.nodes = nodes.into_iter().map(Into::into).collect();
        self.shared.cluster = true;
        self
    }

    /// The first part of the shared tier's keys, `{namespace}:{prefix}_{md5(key)}` (default
    /// `tokcache`): caches that must not share entries use different namespaces. 1-64 of
    /// `[A-Za-z0-9_.:-]`.
    ///
    /// ```
    /// let builder = tokcache::Cache::builder("temp").redis("redis://127.0.0.1:6379/0");
    /// assert!(builder.clone().redis_namespace("staging").check().is_ok());
    /// assert!(builder.redis_namespace("no spaces").check().is_err());
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.shared.namespace);
        self
    }

    /// How long an operation may wait for the shared tier (default 5 ms): a lookup, a
    /// connection, a pipeline of the writer. Past it the operation goes on from the local
    /// tiers, and the tier is left alone for a back-off (50 ms, doubling up to 5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = tokcache::Cache::builder("temp").redis("redis://127.0.0.1:6379/0");
    /// assert!(builder.clone().redis_timeout(Duration::from_millis(20)).check().is_ok());
    /// assert!(builder.redis_timeout(Duration::ZERO).check().is_err());
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = timeout;
        self
    }

    /// Entries waiting for the background writer at most (default 100,000): past it, a `set`
    /// still returns at once and its entry is left out of the shared tier (counted as dropped).
    ///
    /// ```
    /// let builder = tokcache::Cache::builder("temp").redis("redis://127.0.0.1:6379/0");
    /// assert!(builder.clone().redis_queue(10_000).check().is_ok());
    /// assert!(builder.redis_queue(0).check().is_err());
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_queue(mut self, entries: usize) -> Self {
        self.shared.queue = entries;
        self
    }

    /// Opens the cache, creating the directory (and its parents) if needed. Damaged files are
    /// rebuilt from what is intact. A directory that can be read but not written gives a
    /// read-only cache ([`Cache::storage`] says [`crate::Storage::ReadOnly`]: entries on disk
    /// are served, new ones stay in RAM).
    ///
    /// # Errors
    ///
    /// An invalid setting; a directory that cannot be created or used (a path under a regular
    /// file, a regular file, no permission: [`Error::Io`] with the operation and the path); a
    /// directory written by a newer release ([`Error::NewerFormat`]). To keep going from RAM
    /// instead, as the original did, use [`CacheBuilder::open_or_ram_only`].
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(tmp.path().join("a/new/dir")).open()?; // created
    /// assert_eq!(cache.storage(), tokcache::Storage::Disk);
    /// let file = tmp.path().join("a-file");
    /// std::fs::write(&file, "")?;
    /// let err = tokcache::Cache::builder(file.join("cache")).open().err().unwrap();
    /// assert!(matches!(err, tokcache::Error::Io { .. }), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(self) -> Result<Cache> {
        let ttl_secs = self.ttl_secs()?;
        self.check_shared()?;
        let (process, err) = self.open_process(ttl_secs);
        match err {
            Some(e) => Err(e),
            None => Ok(self.into_cache(process, ttl_secs)),
        }
    }

    /// Opens the cache as [`CacheBuilder::open`] does, but never fails: where `open` returns
    /// an error, this returns a cache that works from RAM only ([`crate::Storage::RamOnly`]; an
    /// invalid TTL counts as 24 hours) and the error that made it so. The original's
    /// forgiving behaviour; [`crate::get_persistent_cache`] uses it. Invalid shared-tier
    /// settings leave out the shared tier only (and are the error returned).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let file = tmp.path().join("a-file");
    /// std::fs::write(&file, "")?;
    /// let (cache, why) = tokcache::Cache::builder(&file).open_or_ram_only();
    /// assert_eq!(cache.storage(), tokcache::Storage::RamOnly);
    /// assert!(why.is_some());
    /// cache.set("test", "k", &1)?; // still a cache, in RAM
    /// assert_eq!(cache.get::<i32>("test", "k"), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_or_ram_only(mut self) -> (Cache, Option<Error>) {
        let (ttl_secs, ttl_err) = match self.ttl_secs() {
            Ok(t) => (t, None),
            Err(e) => (24.0 * 3600.0, Some(e)),
        };
        let shared_err = self.check_shared().err();
        if let Some(e) = &shared_err {
            log::warn!("{e}; the cache has no shared tier");
            self.shared.nodes.clear();
        }
        let (process, err) = self.open_process(ttl_secs);
        if let Some(e) = ttl_err.as_ref().or(err.as_ref()) {
            log::warn!("{e}; the cache works from RAM only");
        }
        let err = ttl_err.or(err).or(shared_err);
        (self.into_cache(process, ttl_secs), err)
    }

    /// Checks the settings without opening anything: the TTL, and the shared tier's URLs and
    /// namespace. [`CacheBuilder::open`] fails with the same errors.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`], naming the setting.
    ///
    /// ```
    /// let ok = tokcache::Cache::builder("temp").ttl_hours(24.0);
    /// assert!(ok.check().is_ok());
    /// let bad = tokcache::Cache::builder("temp").ttl_hours(-1.0);
    /// assert!(matches!(bad.check(), Err(tokcache::Error::InvalidSetting { name: "ttl", .. })));
    /// ```
    pub fn check(&self) -> Result<()> {
        self.ttl_secs()?;
        self.check_shared()
    }

    /// Whether the shared tier's settings, if any, are usable.
    fn check_shared(&self) -> Result<()> {
        #[cfg(feature = "redis")]
        if !self.shared.nodes.is_empty() {
            return self.shared.check();
        }
        Ok(())
    }

    fn ttl_secs(&self) -> Result<f64> {
        self.ttl
            .as_ref()
            .map(Duration::as_secs_f64)
            .map_err(|why| Error::InvalidSetting {
                name: "ttl",
                reason: why.clone(),
            })
    }

    fn into_cache(self, process: Process, ttl_secs: f64) -> Cache {
        let cache = Cache {
            process,
            ttl_secs,
            local_seed: random_seed(),
            tally: Tally::default(),
            saves: AtomicU64::new(0),
            settings: self,
        };
        if log::log_enabled!(log::Level::Info) {
            for line in cache.banner().lines() {
                log::info!("{line}");
            }
        }
        cache
    }

    /// The per-process state of the cache: the disk tier, or `None` and why not; the shared
    /// tier if one was asked for.
    pub(super) fn open_process(&self, ttl_secs: f64) -> (Process, Option<Error>) {
        let ram = Arc::new(RamTier::new(self.max_ram_entries, self.max_ram_bytes));
        let (store, err) = match self.open_store(ttl_secs, &ram) {
            Ok(s) => {
                if !s.is_writable() {
                    log::warn!(
                        "{} is read-only: new entries stay in RAM",
                        self.dir.display()
                    );
                }
                (Some(Arc::new(s)), None)
            }
            Err(e) => (None, Some(e)),
        };
        let shared = if self.shared.nodes.is_empty() {
            None
        } else {
            // Checked at open: this fails only where `open_or_ram_only` left the tier out.
            Tier::open(&self.shared, Arc::clone(&self.clock), ttl_secs)
                .map_err(|e| log::warn!("no shared tier: {e}"))
                .ok()
        };
        // Counted into the directory's pool statistics where this handle may write there.
        let pool = match &store {
            Some(s) if s.is_writable() && self.pool => {
                let slot = Arc::new(pool::Slot::claim(&Dir {
                    path: self.dir.clone(),
                    mode: self.file_mode,
                }));
                s.count_into(Arc::clone(&slot));
                if let Some(t) = &shared {
                    t.count_into(Arc::clone(&slot));
                }
                slot
            }
            _ => Arc::new(pool::Slot::private()),
        };
        let process = Process::new(store, ram, shared, self.background, pool);
        // Expired entries are removed at start-up too (the original's promise) when a pass is
        // due: by a compaction on the process's thread, not in `open`.
        if let Some(s) = process.writable_store()
            && s.expiry_due()
        {
            process.compact_when_full(s);
        }
        (process, err)
    }

    /// The disk tier, telling `ram` of the keys other processes change.
    fn open_store(&self, ttl_secs: f64, ram: &Arc<RamTier>) -> Result<Store> {
        let opts = store::Options {
            mode: self.file_mode,
            compact_records: self.compact_records,
            compact_bytes: self.compact_bytes,
            gc_min_dead: self.gc_min_dead,
            ttl_secs,
            disk_bound: self
                .max_disk_bytes
                .map(|n| (n > 0).then_some(n.max(MIN_DISK_BOUND))),
        };
        let dir = Dir {
            path: self.dir.clone(),
            mode: self.file_mode,
        };
        dir.create()?;
        let ram = Arc::clone(ram);
        let on_change = Box::new(move |changed| invalidate(&ram, changed));
        let store = Store::open(dir, opts, Arc::clone(&self.clock), &legacy::mark, on_change)?;
        if store.is_writable()
            && let Err(e) = legacy::resume(&store, ttl_secs, self.clock.now())
        {
            // The mark stays: the next process to open the cache goes on with it.
            log::warn!("migration of the original's files stopped: {e}");
        }
        Ok(store)
    }

    /// A new handle of the same settings for the process that runs this: used in a forked
    /// child, where the parent's state must not be used. Never fails (RAM only, with a
    /// warning, if the directory cannot be opened there).
    pub(super) fn reopen_here(&self, ttl_secs: f64) -> Process {
        let (p, err) = self.open_process(ttl_secs);
        if let Some(e) = err {
            log::warn!("{e}; after fork(), this process's cache works from RAM only");
        }
        p
    }
}
