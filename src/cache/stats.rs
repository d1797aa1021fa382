//! What a cache tells about itself: [`Stats`] (the original's fields first), its
//! [`Storage`], and the original's start-up banner.

use std::sync::atomic::Ordering;

use super::Cache;
use crate::shared::SharedStats;
use crate::tally::Found;

/// How the cache keeps its entries.
///
/// ```
/// use tokcache::{Cache, Storage};
/// # let tmp = tempfile::tempdir()?;
/// assert_eq!(Cache::open(tmp.path())?.storage(), Storage::Disk);
/// let file = tmp.path().join("a-file");
/// std::fs::write(&file, "")?;
/// assert_eq!(Cache::builder(&file).open_or_ram_only().0.storage(), Storage::RamOnly);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Shared disk tier and RAM tier.
    Disk,
    /// The directory could not be written: existing entries are served, new ones kept in RAM.
    ReadOnly,
    /// The directory could not be used at all: RAM only.
    RamOnly,
}

/// Counters and sizes, with the original's field names first.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::builder(dir.path()).max_disk_bytes(64 << 20).open()?;
/// cache.set("test", "k", &1)?;
/// let s = cache.get_stats();
/// assert_eq!((s.disk_files, s.saves, s.storage), (1, 1, tokcache::Storage::Disk));
/// assert!(s.live_bytes > 0 && s.disk_bytes <= s.max_disk_bytes.unwrap());
/// assert!(s.shared.is_none()); // no shared tier
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Entries in this process's RAM tier.
    pub ram_entries: u64,
    /// Entries on disk (not files), expired ones included until `clear_expired`.
    pub disk_files: u64,
    /// Lookups of this handle answered from the RAM tier.
    pub ram_hits: u64,
    /// Lookups of this handle answered from the shared files.
    pub disk_hits: u64,
    /// Lookups of this handle that found no live entry.
    pub misses: u64,
    /// Entries this handle stored (`set`, `set_tokens`, imports).
    pub saves: u64,
    /// Entries the RAM tier dropped to make room.
    pub evictions: u64,
    /// Hits / lookups x 100, rounded to 2 decimals; 0.0 before the first lookup.
    pub hit_rate_percent: f64,
    /// The cache directory, as given when it was opened.
    pub temp_dir: String,
    /// Bytes of records that belong to live entries.
    pub live_bytes: u64,
    /// Bytes of superseded, removed or expired records not yet reclaimed.
    pub dead_bytes: u64,
    /// Bytes of all segment files.
    pub segment_bytes: u64,
    /// Bytes the cache's files take on disk, as the file system counts their blocks
    /// (segments, indexes and the small files; not the original's entry files): what
    /// `max_disk_bytes` bounds.
    pub disk_bytes: u64,
    /// The directory's disk bound ([`crate::CacheBuilder::max_disk_bytes`]); `None`: none.
    pub max_disk_bytes: Option<u64>,
    /// Entries evicted from disk to keep the bound, by every process of the directory (its
    /// pool statistics; 0 when they are off).
    pub disk_evictions: u64,
    /// Expired entries whose space compactions gave back, by every process of the directory.
    pub expired_reclaimed: u64,
    /// The generation of the index in use (it grows with every compaction).
    pub index_generation: u64,
    /// Records in the recent index: the newest of each key written since the full index was
    /// last rewritten, removals included (0 when the generation has none; docs/format.md).
    pub recent_index_records: u64,
    /// Records appended since the last compaction: what a process scans when it opens the
    /// cache.
    pub tail_records: u64,
    /// How the cache keeps its entries (disk, read-only, RAM only).
    pub storage: Storage,
    /// Lookups of this handle answered by the shared tier (also in `shared.hits`; 0 without
    /// one). They count as hits in `hit_rate_percent`.
    pub shared_hits: u64,
    /// What the shared tier did in this process; `None` without one.
    pub shared: Option<SharedStats>,
}

impl Cache {
    /// The original's start-up banner.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let banner = tokcache::Cache::open(dir.path())?.banner();
    /// assert!(banner.starts_with("Persistent token cache initialized\n  Cache directory: "));
    /// assert!(banner.contains("Cache files: 1, RAM entries: 0"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn banner(&self) -> String {
        let s = self.get_stats();
        let mut b = format!(
            "Persistent token cache initialized\n  Cache directory: {}\n  Cache files: {}, RAM entries: {}",
            s.temp_dir, s.disk_files, s.ram_entries
        );
        if s.disk_files > 0 {
            b.push_str("\n  Existing cache files found - lazy loading enabled");
        }
        if self.local().storage() != Storage::Disk {
            b.push_str(&format!(
                "\n  Storage degraded: {:?}",
                self.local().storage()
            ));
        }
        b
    }

    /// Counters and sizes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let _ = cache.get::<i32>("test", "k");
    /// let _ = cache.get::<i32>("test", "absent");
    /// let s = cache.get_stats();
    /// assert_eq!((s.saves, s.ram_hits, s.misses, s.hit_rate_percent), (1, 1, 1, 50.0));
    /// assert_eq!(s.disk_files, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_stats(&self) -> Stats {
        self.refresh();
        let disk = self
            .local()
            .store
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default();
        let pool = self.pool_totals();
        let (ram_hits, disk_hits, shared_hits, misses) = (
            self.tally.get(Found::RamHit),
            self.tally.get(Found::DiskHit),
            self.tally.get(Found::SharedHit),
            self.tally.get(Found::Miss),
        );
        let hits = ram_hits + disk_hits + shared_hits;
        let lookups = hits + misses;
        let hit_rate_percent = if lookups == 0 {
            0.0
        } else {
            (hits as f64 / lookups as f64 * 10_000.0).round() / 100.0
        };
        Stats {
            ram_entries: self.local().ram.len() as u64,
            disk_files: disk.entries,
            ram_hits,
            disk_hits,
            misses,
            saves: self.saves.load(Ordering::Relaxed),
            evictions: self.local().ram.evictions(),
            hit_rate_percent,
            temp_dir: self.settings.dir.display().to_string(),
            live_bytes: disk.live_bytes,
            dead_bytes: disk.segment_bytes.saturating_sub(disk.live_bytes),
            segment_bytes: disk.segment_bytes,
            disk_bytes: disk.disk_bytes,
            max_disk_bytes: disk.max_disk_bytes,
            disk_evictions: pool.disk_evictions,
            expired_reclaimed: pool.expired_reclaimed,
            index_generation: disk.generation,
            recent_index_records: disk.recent_records,
            tail_records: disk.tail_records,
            storage: self.local().storage(),
            shared_hits,
            shared: self.local().shared.as_ref().map(crate::shared::Tier::stats),
        }
    }
}
