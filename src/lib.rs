//! tokcache: a persistent, memory-mapped cache for tokenization results, shared safely by the
//! processes of a worker pool. A drop-in for the original Python `PersistentTokenCache`: same
//! logical names (`{prefix}_{md5(key)}`), same JSON on export, a lookup that is a hash probe in
//! shared memory.
//!
//! ```
//! use tokcache::{Cache, TOKEN_COUNT, token_count_key};
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("temp");
//! let cache = Cache::open(&dir)?; // the original's default directory is "temp"
//! let key = token_count_key("cl100k_base", "hello world"); // "tokenizer:cl100k_base:hello world"
//! cache.set(TOKEN_COUNT, &key, &2u64)?;
//! assert_eq!(cache.get::<u64>(TOKEN_COUNT, &key), Some(2));
//!
//! // Another handle (another process, typically) sees it at once.
//! let other = Cache::open(&dir)?;
//! assert_eq!(other.get::<u64>(TOKEN_COUNT, &key), Some(2));
//! assert_eq!(other.get_stats().disk_hits, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The on-disk format is specified in `docs/format.md`; what is tested and where the promises
//! end, in `docs/reliability.md`.
#![deny(unsafe_code)]

#[cfg(not(target_endian = "little"))]
compile_error!(
    "tokcache stores little-endian words and borrows them in place: little-endian targets only"
);

#[macro_use]
mod killpoint;

mod cache;
mod clock;
mod control;
#[cfg(feature = "killpoints")]
mod crashsim;
mod entry;
mod error;
mod files;
mod filter;
mod fork;
mod hash;
mod heat;
mod index;
mod keys;
mod le;
mod legacy;
mod lock;
mod map;
mod pool;
mod prefixes;
mod pyjson;
mod ram;
mod record;
mod segment;
mod shared;
mod store;
mod sys;
mod tally;
mod value;

use std::sync::OnceLock;

pub use cache::{
    Cache, CacheBuilder, ChatFormat, ChatMessage, PoolCounts, PoolStats, ProcessStats, ReadOptions,
    Stats, Storage, pool_stats,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Entry, ValueKind, ValueRef};
pub use error::{Error, Result};
pub use keys::{
    DEFAULT_PREFIX, MAX_PREFIX_LEN, TOKEN_COUNT, logical_name, token_count_key, validate_prefix,
};
pub mod original;
pub use shared::SharedStats;

/// Python's JSON text of a string and a float, as the original wrote them: for the benchmarks'
/// model of the original. Not part of the API.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::pyjson::{write_float, write_str};
}
pub use store::{CompactReport, VerifyReport};

/// The disk bound of a cache directory that nobody gave one
/// ([`CacheBuilder::max_disk_bytes`]): 1 GiB.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?; // a new directory, no bound given
/// assert_eq!(cache.get_stats().max_disk_bytes, Some(tokcache::DEFAULT_MAX_DISK_BYTES));
/// assert_eq!(tokcache::DEFAULT_MAX_DISK_BYTES, 1 << 30);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_MAX_DISK_BYTES: u64 = control::DEFAULT_DISK_BOUND;

/// The process-wide cache: `$TOKCACHE_DIR`, else `temp`, with the defaults (the disk bound
/// `$TOKCACHE_MAX_DISK_BYTES` if set: [`CacheBuilder::max_disk_bytes`]), and with the feature
/// `redis`, a shared tier at `$TOKCACHE_REDIS` if set (`CacheBuilder::redis`). Never fails: a
/// directory it cannot use gives a RAM-only cache and a warning (see [`Cache::storage`]).
/// It is never dropped, so a compaction its thread runs when the process exits is cut short
/// (harmless: the next one starts over); a short-lived program that writes much can call
/// [`Cache::compact`] before it ends.
///
/// ```
/// # let tmp = tempfile::tempdir()?;
/// # // SAFETY: the doctest has one thread here.
/// # unsafe { std::env::set_var("TOKCACHE_DIR", tmp.path()) };
/// let cache = tokcache::get_persistent_cache(); // $TOKCACHE_DIR, or "temp"
/// cache.set_token_count("cl100k_base", "hello", 1)?;
/// assert!(std::ptr::eq(cache, tokcache::get_persistent_cache())); // one per process
/// assert_eq!(cache.dir(), tmp.path());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn get_persistent_cache() -> &'static Cache {
    static GLOBAL: OnceLock<Cache> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let dir = std::env::var_os("TOKCACHE_DIR").unwrap_or_else(|| "temp".into());
        let mut builder = Cache::builder(dir);
        if let Some(n) = std::env::var("TOKCACHE_MAX_DISK_BYTES")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            builder = builder.max_disk_bytes(n);
        }
        #[cfg(feature = "redis")]
        let builder = match std::env::var("TOKCACHE_REDIS") {
            Ok(url) => builder.redis(&url),
            Err(_) => builder,
        };
        builder.open_or_ram_only().0
    })
}
