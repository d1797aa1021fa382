//! The public cache: RAM tier in front of the shared disk tier.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod builder;
mod chat;
mod pool_stats;
mod process;
mod read;
mod stats;

pub use builder::CacheBuilder;
pub use chat::{ChatFormat, ChatMessage};
use parking_lot::Mutex;
pub use pool_stats::{PoolCounts, PoolStats, ProcessStats, pool_stats};
use process::{Flights, Process};
pub use read::ReadOptions;
pub use stats::{Stats, Storage};

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::keys::{Key, TOKEN_COUNT, validate_prefix};
use crate::legacy;
use crate::pool;
use crate::record::{self, Kind, MAX_RECORD_LEN};
use crate::store::{self, CompactReport, Lookup, Store, VerifyReport};
use crate::tally::Tally;
use crate::value::Stored;

/// A persistent cache of JSON values (token counts above all), shared by the processes that
/// open the same directory. `Send + Sync`: share one per process (a handle opened before
/// `fork()` also works in the children).
///
/// ```
/// use tokcache::Cache;
/// # let tmp = tempfile::tempdir()?;
/// let cache = Cache::open(tmp.path())?;
/// let count = |text: &str| text.split_whitespace().count() as u64; // a tokenizer, say
/// let key = "tokenizer:words:the same prompt again";
/// let n = cache.get_or_insert_with("token_count", key, || count(key))?; // computed
/// let m = cache.get_or_insert_with("token_count", key, || unreachable!())?; // cached
/// assert_eq!((n, m), (4, 4));
/// assert!(cache.remove("token_count", key)?);
/// assert_eq!(cache.get::<u64>("token_count", key), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Cache {
    /// The settings it was opened with (directory, clock, ...): a forked child opens its own
    /// state with them.
    settings: CacheBuilder,
    /// The state of the process that opened it (and of forked children: [`Process::current`]).
    process: Process,
    /// The TTL in seconds (the settings' one, or 24 h where it was invalid and the cache was
    /// opened anyway: [`CacheBuilder::open_or_ram_only`]).
    ttl_secs: f64,
    local_seed: u64,
    /// Hits and misses.
    tally: Tally,
    saves: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.settings.dir)
            .field("storage", &self.local().storage())
            .finish_non_exhaustive()
    }
}

/// Keys (with their prefix) longer than this are not copied into the RAM tier when their
/// record is on disk: a hit reads them from the shared mapping for about the same cost (both
/// hash the asked key and compare it in full), and 1000 chat-message keys would otherwise hold
/// hundreds of MB of private memory in every process. (Where the entry lives only in RAM, a
/// read-only or RAM-only cache, it is kept, within the tier's byte bound.)
const RAM_KEY_MAX: usize = 4096;

/// A caller of `get_or_insert_with` for a key: it holds the key's mutex entry for as long
/// as it computes or waits, and the last one to leave (returning or unwinding) removes it.
struct Flight<'a> {
    flights: &'a Flights,
    hash: u64,
    mutex: Arc<Mutex<()>>,
}

impl<'a> Flight<'a> {
    fn join(flights: &'a Flights, hash: u64) -> Self {
        let mutex = Arc::clone(flights.lock().entry(hash).or_default());
        Self {
            flights,
            hash,
            mutex,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if Arc::strong_count(&self.mutex) == 2 {
            flights.remove(&self.hash); // nobody else is waiting on this key
        }
    }
}

impl Cache {
    /// Opens `dir` with the defaults: 1000 RAM entries, 24 h TTL (see [`CacheBuilder::open`]
    /// for the errors).
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(tmp.path().join("temp"))?;
    /// cache.set("token_count", "tokenizer:cl100k_base:hi", &1u64)?;
    /// assert_eq!(cache.get_stats().ram_entries, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::builder(dir).open()
    }

    /// A builder for `dir`, with the defaults its methods document.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::builder(tmp.path()).max_ram_entries(10_000).open()?;
    /// assert_eq!(cache.dir(), tmp.path());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(dir: impl AsRef<Path>) -> CacheBuilder {
        CacheBuilder::new(dir.as_ref().to_path_buf())
    }

    /// The cache directory, as given when it was opened.
    ///
    /// ```
    /// # let tmp = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(tmp.path().join("temp"))?;
    /// assert!(cache.dir().ends_with("temp"));
    /// assert_eq!(cache.get_stats().temp_dir, cache.dir().display().to_string());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// How this process keeps the cache's entries: [`Storage::Disk`] unless the directory
    /// was read-only, or could not be used ([`CacheBuilder::open_or_ram_only`]).
    ///
    /// ```
    /// use std::os::unix::fs::PermissionsExt;
    /// use tokcache::{Cache, Storage};
    /// # let tmp = tempfile::tempdir()?;
    /// let dir = tmp.path().join("cache");
    /// Cache::open(&dir)?.set("test", "k", &1)?;
    /// assert_eq!(Cache::open(&dir)?.storage(), Storage::Disk);
    /// std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))?;
    /// let reader = Cache::open(&dir)?;
    /// # let root = reader.storage() == Storage::Disk; // root writes anywhere
    /// # if !root {
    /// assert_eq!(reader.storage(), Storage::ReadOnly); // entries on disk are still served
    /// # }
    /// assert_eq!(reader.get::<i32>("test", "k"), Some(1));
    /// # std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn storage(&self) -> Storage {
        self.local().storage()
    }

    fn hash(&self, prefix: &str, key: &Key<'_>) -> u64 {
        self.hash_in(self.local(), prefix, key)
    }

    /// The key hash under `local`'s disk tier (its seed), or this handle's own seed.
    fn hash_in(&self, local: &Process, prefix: &str, key: &Key<'_>) -> u64 {
        let seed = local.store.as_ref().map_or(self.local_seed, |s| s.seed());
        key.hash(seed, prefix)
    }

    fn expired(&self, timestamp: f64, now: f64) -> bool {
        now - timestamp > self.ttl_secs
    }

    /// This process's state of the cache (made anew in a forked child: fork.rs).
    #[inline]
    fn local(&self) -> &Process {
        self.process
            .current(|| self.settings.reopen_here(self.ttl_secs))
    }

    /// The disk tier's view, caught up with other processes' writes (a failure to catch up
    /// leaves the last good view in use). Hold it only for lookups: a write would wait for it.
    fn reader(&self) -> Option<store::Reader<'_>> {
        Self::reader_of(self.local())
    }

    /// [`Cache::reader`] of `local`'s disk tier.
    fn reader_of(local: &Process) -> Option<store::Reader<'_>> {
        let store = local.store.as_ref()?;
        Some(store.reader().unwrap_or_else(|e| {
            log::warn!("cannot follow the cache's changes: {e}");
            store.last_view()
        }))
    }

    /// Follows other processes' writes; a failure leaves the last good view in use.
    fn refresh(&self) {
        if let Some(store) = &self.local().store
            && let Err(e) = store.refresh()
        {
            log::warn!("cannot follow the cache's changes: {e}");
        }
    }

    /// Stores `value` under `key` in RAM and on disk.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("token_count", "tokenizer:cl100k_base:hello", &1u64)?;
    /// assert_eq!(cache.get::<u64>("token_count", "tokenizer:cl100k_base:hello"), Some(1));
    /// // Every process that opens the directory sees it.
    /// let other = tokcache::Cache::open(dir.path())?;
    /// assert_eq!(other.get::<u64>("token_count", "tokenizer:cl100k_base:hello"), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set<T: Serialize + ?Sized>(&self, prefix: &str, key: &str, value: &T) -> Result<()> {
        validate_prefix(prefix)?;
        self.put(
            prefix,
            Key::whole(key.as_bytes()),
            Stored::from_value(value)?,
        )
    }

    /// Stores token ids so that readers can borrow them as `&[u32]`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_tokens("tokens", "hello world", &[15339, 1917])?;
    /// let ids = cache.get_tokens("tokens", "hello world").unwrap();
    /// assert_eq!(ids.as_tokens(), Some(&[15339u32, 1917][..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_tokens(&self, prefix: &str, key: &str, tokens: &[u32]) -> Result<()> {
        validate_prefix(prefix)?;
        self.put(
            prefix,
            Key::whole(key.as_bytes()),
            Stored::Tokens(tokens.into()),
        )
    }

    fn put(&self, prefix: &str, key: Key<'_>, value: Stored) -> Result<()> {
        let (kind, bytes) = value.encode();
        let now = self.settings.clock.now();
        let hash = self.hash(prefix, &key);
        let local = self.local();
        let shared = local.shared.as_ref().map(|t| (t, value.clone()));
        // The RAM tier is updated under the write, so that two threads setting one key leave
        // the RAM tier with the value that is last on disk.
        self.write(hash, prefix, &key, kind, &bytes, now, || {
            self.keep_in_ram(local, hash, prefix, &key, value, now);
        })?;
        if let Some((tier, value)) = shared {
            tier.put(prefix, &key, &value, now);
        }
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.local().pool.add(pool::Counter::Set);
        Ok(())
    }

    /// Puts a value just written into `local`'s RAM tier, unless its key is long and its record
    /// is on disk ([`RAM_KEY_MAX`]: then an older copy is dropped instead).
    fn keep_in_ram(
        &self,
        local: &Process,
        hash: u64,
        prefix: &str,
        key: &Key<'_>,
        value: Stored,
        timestamp: f64,
    ) {
        let on_disk = local.writable_store().is_some();
        if on_disk && prefix.len() + key.len() > RAM_KEY_MAX {
            local.ram.remove(hash);
        } else {
            local.count_ram_evictions(local.ram.insert(hash, prefix, key, value, timestamp));
        }
    }

    /// Appends one record (for the key of `hash`) to the disk tier, if there is a writable one,
    /// and runs `published` once it is visible (at once when there is no writable disk tier).
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        hash: u64,
        prefix: &str,
        key: &Key<'_>,
        kind: Kind,
        value: &[u8],
        timestamp: f64,
        published: impl FnOnce(),
    ) -> Result<()> {
        // The limit holds for the key's text (and again for its packed form, which an
        // incompressible key makes a little longer).
        let too_large = |len| Error::TooLarge {
            what: "key and value",
            len,
            max: MAX_RECORD_LEN,
        };
        let len = record::encoded_len(value.len(), record::Prefix::Text(prefix), key.len());
        if len > MAX_RECORD_LEN {
            return Err(too_large(len));
        }
        let packed = key.packed();
        let stored: &[&[u8]] = match &packed {
            Some(p) => &[p],
            None => key.parts(),
        };
        let stored_len = stored.iter().map(|p| p.len()).sum();
        let len = record::encoded_len(value.len(), record::Prefix::Text(prefix), stored_len);
        if len > MAX_RECORD_LEN {
            return Err(too_large(len));
        }
        let Some(store) = self.local().writable_store() else {
            published();
            return Ok(());
        };
        let prefix = store.prefix_field(prefix)?;
        let mut buf = Vec::with_capacity(len);
        record::encode_parts(&mut buf, kind, hash, timestamp, value, prefix, stored);
        if store.append(&buf, published)? {
            self.local().compact_when_full(store);
        }
        Ok(())
    }

    /// Removes `key`; `true` if it was there (an entry of the original's files that a migration
    /// under way has not brought in yet is removed too, and counts as not there).
    ///
    /// # Errors
    ///
    /// [`Error::Degraded`] if the key is on disk and the cache cannot write there (a read-only
    /// directory): nothing is removed, since the entry would come back on the next `get`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// assert!(cache.remove("test", "k")?);
    /// assert!(!cache.remove("test", "k")?); // no longer there
    /// assert_eq!(tokcache::Cache::open(dir.path())?.get::<i32>("test", "k"), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(&self, prefix: &str, key: &str) -> Result<bool> {
        validate_prefix(prefix)?;
        let key = Key::whole(key.as_bytes());
        let hash = self.hash(prefix, &key);
        let on_disk = self.reader().is_some_and(|r| {
            r.get(hash, prefix, &key, Lookup::Alone, |_, _| ())
                .is_some()
        });
        if on_disk && self.local().writable_store().is_none() {
            return Err(self.not_writable());
        }
        let in_ram = self.local().ram.get(hash, prefix, &key).is_some();
        // While the original's files are migrated, a key not in yet may still come: the
        // removal is written all the same, so that the migration leaves the key out.
        if on_disk || legacy::migration_pending(&self.settings.dir) {
            self.write(
                hash,
                prefix,
                &key,
                Kind::Tombstone,
                &[],
                self.settings.clock.now(),
                || {},
            )?;
        }
        self.local().ram.remove(hash);
        self.local().pool.add(pool::Counter::Removal);
        if let Some(tier) = &self.local().shared {
            tier.remove(prefix, &key);
        }
        Ok(on_disk || in_ram)
    }

    /// The value of `key`, computed by `compute` and stored on a miss. Concurrent callers in
    /// this process asking for the same key compute it once (if `compute` panics, the panic
    /// goes to its caller, and the next caller waiting computes it).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// let n: u64 = cache.get_or_insert_with("token_count", "k", || 42)?;
    /// let again: u64 = cache.get_or_insert_with("token_count", "k", || unreachable!())?;
    /// assert_eq!((n, again), (42, 42));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_or_insert_with<T, F>(&self, prefix: &str, key: &str, compute: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        validate_prefix(prefix)?;
        self.get_or_insert_key(prefix, Key::whole(key.as_bytes()), compute)
    }

    fn get_or_insert_key<T, F>(&self, prefix: &str, key: Key<'_>, compute: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        if let Some(v) = self.get_counted(prefix, key, true)? {
            return Ok(v);
        }
        let hash = self.hash(prefix, &key);
        let flights = &self.local().flights;
        let flight = Flight::join(flights, hash);
        let _computing = flight.mutex.lock();
        match self.get_counted(prefix, key, false)? {
            Some(v) => Ok(v),
            None => {
                // A panic here unwinds through `_computing` and `flight`: the next caller
                // waiting for this key computes it, and the entry goes with the last one.
                let value = compute();
                self.put(prefix, key, Stored::from_value(&value)?)
                    .map(|()| value)
            }
        }
    }

    /// Stores the token count of `text` under `encoding` (see [`Cache::get_token_count`]):
    /// the same entry, logical name and exported bytes as `set(TOKEN_COUNT, &token_count_key(
    /// encoding, text), &count)`, without building that key.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_token_count("cl100k_base", "Hello, world!", 4)?;
    /// assert_eq!(cache.get_token_count("cl100k_base", "Hello, world!"), Some(4));
    /// let key = tokcache::token_count_key("cl100k_base", "Hello, world!");
    /// assert_eq!(cache.get::<u64>(tokcache::TOKEN_COUNT, &key), Some(4)); // the same entry
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_token_count(&self, encoding: &str, text: &str, count: u64) -> Result<()> {
        self.put(
            TOKEN_COUNT,
            Key::token_count(encoding, text),
            Stored::from_value(&count)?,
        )
    }

    /// The token count of `text` under `encoding`, computed by `count` and stored on a miss
    /// ([`Cache::get_or_insert_with`] of the token-count key, without building it).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// let words = |t: &str| t.split_whitespace().count() as u64; // a tokenizer's count
    /// let n = cache.token_count_or_insert_with("cl100k_base", "two words", || words("two words"))?;
    /// assert_eq!(n, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_count_or_insert_with(
        &self,
        encoding: &str,
        text: &str,
        count: impl FnOnce() -> u64,
    ) -> Result<u64> {
        self.get_or_insert_key(TOKEN_COUNT, Key::token_count(encoding, text), count)
    }

    fn writable_store(&self) -> Result<&Store> {
        self.local()
            .writable_store()
            .map(|s| &**s)
            .ok_or_else(|| self.not_writable())
    }

    /// What a write that the disk tier cannot take returns.
    fn not_writable(&self) -> Error {
        Error::Degraded {
            reason: format!(
                "{} is not writable ({:?})",
                self.settings.dir.display(),
                self.local().storage()
            ),
        }
    }

    /// Drops expired entries from disk and reclaims their space; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Degraded`] without a writable disk tier (read-only or RAM-only), as
    /// [`Cache::compact`].
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// # let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(tokcache::ManualClock::at(1.9e9));
    /// let cache = tokcache::Cache::builder(dir.path())
    ///     .ttl(Duration::from_secs(3600))
    ///     .clock(clock.clone())
    ///     .open()?;
    /// cache.set("test", "old", &1)?;
    /// clock.advance(3000.0);
    /// cache.set("test", "new", &2)?;
    /// clock.advance(1000.0); // "old" is 4000 s old, "new" 1000 s
    /// assert_eq!(cache.clear_expired()?, 1);
    /// assert_eq!(cache.get_stats().disk_files, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear_expired(&self) -> Result<usize> {
        let report = self
            .writable_store()?
            .compact(self.settings.clock.now(), true)?;
        Ok(report.expired as usize)
    }

    /// Rebuilds the index now: merges the appended records, reclaims mostly-dead segments.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let report = cache.compact()?;
    /// assert!(report.generation > 0);
    /// assert!(cache.verify(|_| {}).is_sound());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<CompactReport> {
        self.writable_store()?
            .compact(self.settings.clock.now(), false)
    }

    /// Removes every entry from RAM and disk, the original-format entry files included.
    /// Files that are not entries are left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Degraded`] on a read-only directory (the RAM tier is cleared, the disk keeps
    /// its entries, which later gets return).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// std::fs::write(dir.path().join("notes.txt"), "not the cache's")?;
    /// cache.clear_all()?;
    /// assert_eq!(cache.get::<i32>("test", "k"), None);
    /// assert_eq!(cache.get_stats().disk_files, 0);
    /// assert!(dir.path().join("notes.txt").exists()); // left alone
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear_all(&self) -> Result<()> {
        self.local().ram.clear();
        if self.local().store.is_some() {
            let store = self.writable_store()?;
            store.clear()?;
            for path in legacy::list_files(&self.settings.dir)? {
                if legacy::read_file(&path).is_ok() {
                    std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Checks every file of the cache (see [`VerifyReport`]); `progress` is called with the
    /// number of records checked so far. Waits for a compaction under way in any process, and
    /// holds new ones off until it is done (their files in flight would look like leftovers).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// for i in 0..100 {
    ///     cache.set("test", &i.to_string(), &i)?;
    /// }
    /// let report = cache.verify(|n| eprint!("\r{n} records checked"));
    /// assert!(report.is_sound(), "{:?}", report.problems);
    /// assert_eq!(report.records_checked, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&self, progress: impl FnMut(u64)) -> VerifyReport {
        match &self.local().store {
            Some(s) => s.verify(progress),
            None => VerifyReport {
                problems: vec![format!(
                    "{} holds no cache ({:?})",
                    self.settings.dir.display(),
                    self.local().storage()
                )],
                ..VerifyReport::default()
            },
        }
    }

    /// Makes every `set` before it durable (fsync of the active segment and control page) and,
    /// with a shared tier, waits until the background writer has written it there too (or
    /// given up: a shared tier that is down or slow holds this up for its timeouts only).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// cache.flush()?; // survives a machine crash from here on
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        let local = self.writable_store().and_then(Store::flush);
        if let Some(tier) = &self.local().shared {
            tier.flush();
        }
        local
    }

    /// Deletes this cache's entries from the shared tier: every Redis key of its namespace (on
    /// every master of a cluster), by `SCAN` in batches, never `FLUSHDB`. Other machines'
    /// local tiers keep what they have. Returns how many keys were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::Shared`] when the cache has no shared tier or Redis fails meanwhile.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// // Without a shared tier there is nothing to clear: an error says so.
    /// assert!(matches!(cache.clear_shared(), Err(tokcache::Error::Shared { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear_shared(&self) -> Result<u64> {
        match &self.local().shared {
            Some(tier) => tier.clear(),
            None => Err(Error::Shared {
                reason: "this cache has no shared tier".into(),
            }),
        }
    }

    /// Calls `f` with every entry on disk, expired ones included (see [`Entry::is_expired`]).
    /// Streams: memory does not grow with the number of entries. `f` must not call back into
    /// this cache.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("token_count", "tokenizer:cl100k_base:hi", &1u64)?;
    /// cache.set("test", "k", &"v")?;
    /// let mut names = Vec::new();
    /// cache.for_each_entry(|e| names.push((e.prefix().to_string(), e.logical_name())));
    /// names.sort();
    /// assert_eq!(names.len(), 2);
    /// assert_eq!(names[0].1, tokcache::logical_name("test", "k"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_each_entry(&self, mut f: impl FnMut(&Entry<'_>)) {
        self.refresh();
        let Some(store) = &self.local().store else {
            return;
        };
        let now = self.settings.clock.now();
        store.for_each(|rec| {
            if let Some(e) = Entry::new(rec, now, self.ttl_secs) {
                f(&e);
            }
        });
    }

    /// Imports one `{prefix}_{md5}.json` file of the original, after checking that its content
    /// matches its name. `Ok(false)` if it is expired.
    pub(crate) fn import_original_file(&self, path: &Path) -> Result<bool> {
        self.import_original(legacy::read_file(path)?.bytes)
    }

    /// Whether `name` is named like an original-format entry file (`{prefix}_{md5}.json`).
    pub(crate) fn is_original_file_name(name: &str) -> bool {
        legacy::parse_file_name(name).is_some()
    }

    /// Stores one original-format entry object (a `{prefix}_{md5}.json` file's content or a
    /// line of a JSONL export) with its own timestamp. `Ok(false)` if it is expired.
    pub(crate) fn import_original(&self, bytes: Vec<u8>) -> Result<bool> {
        let e = legacy::check_entry(bytes).map_err(Error::InvalidValue)?;
        if self.expired(e.timestamp, self.settings.clock.now()) {
            return Ok(false);
        }
        let key = Key::whole(e.key.as_bytes());
        let hash = self.hash(&e.prefix, &key);
        self.write(
            hash,
            &e.prefix,
            &key,
            Kind::Legacy,
            &e.bytes,
            e.timestamp,
            || {},
        )?;
        self.local().ram.remove(hash);
        if let Some(tier) = &self.local().shared {
            tier.put_original(&e);
        }
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.local().pool.add(pool::Counter::Set);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    /// A `compute` that panics: its caller gets the panic, a caller waiting for the same key
    /// computes it, and no in-flight entry is left behind.
    #[test]
    fn a_panicking_computation_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let started = Barrier::new(2);
        std::thread::scope(|s| {
            let panicked = s.spawn(|| {
                cache.get_or_insert_with("test", "k", || -> u64 {
                    started.wait();
                    // Until the other caller has joined this key's flight (the map's handle,
                    // this caller's, and the waiter's): it then waits on its mutex.
                    let waiting = || {
                        let flights = cache.local().flights.lock();
                        flights.values().any(|m| Arc::strong_count(m) >= 3)
                    };
                    while !waiting() {
                        std::thread::yield_now();
                    }
                    panic!("compute failed")
                })
            });
            started.wait();
            let waited = cache.get_or_insert_with("test", "k", || 7u64);
            assert!(panicked.join().is_err());
            assert_eq!(waited.unwrap(), 7);
        });
        assert!(cache.local().flights.lock().is_empty(), "an entry leaked");
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_insert_with("test", "other", || -> u64 { panic!("again") })
        }));
        assert!(again.is_err());
        assert!(cache.local().flights.lock().is_empty(), "an entry leaked");
        assert_eq!(cache.get::<u64>("test", "k"), Some(7));
        assert_eq!(cache.get::<u64>("test", "other"), None);
    }
}
