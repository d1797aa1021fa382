//! tokcache: a persistent, memory-mapped cache for tokenization results, shared safely by the
//! processes of a worker pool. A drop-in for the original Python `PersistentTokenCache`: same
//! logical names (`{prefix}_{md5(key)}`), same JSON on export, a lookup that is a hash probe in
//! shared memory.
//!
//! ```no_run
//! use tokcache::Cache;
//! let cache = Cache::open("temp")?;
//! cache.set("token_count", "tokenizer:cl100k_base:hello", &1u64)?;
//! let n: Option<u64> = cache.get("token_count", "tokenizer:cl100k_base:hello");
//! assert_eq!(n, Some(1));
//! # Ok::<(), tokcache::Error>(())
//! ```
//!
//! The on-disk format is specified in `docs/format.md`.
#![deny(unsafe_code)]

#[cfg(not(target_endian = "little"))]
compile_error!(
    "tokcache stores little-endian words and borrows them in place: little-endian targets only"
);

mod cache;
mod clock;
mod control;
mod entry;
mod error;
mod files;
mod filter;
mod fork;
mod hash;
mod index;
pub mod keys;
mod legacy;
mod lock;
mod map;
mod prefixes;
mod pyjson;
mod ram;
mod record;
mod segment;
mod store;
mod tally;
mod value;

use std::sync::OnceLock;

pub use cache::{Cache, CacheBuilder, Stats, Storage};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Entry, ValueRef};
pub use error::{Error, Result};
pub use keys::{logical_name, symbol_test_key, token_count_key};
pub use pyjson::{write_float as write_python_float, write_str as write_python_str};
pub use store::{CompactReport, VerifyReport};

/// The process-wide cache: `$TOKCACHE_DIR`, else `temp`, with the defaults. Never fails: a
/// directory it cannot use gives a RAM-only cache and a warning (see [`Cache::storage`]).
/// It is never dropped, so a compaction its thread runs when the process exits is cut short
/// (harmless: the next one starts over); a short-lived program that writes much can call
/// [`Cache::compact`] before it ends.
pub fn get_persistent_cache() -> &'static Cache {
    static GLOBAL: OnceLock<Cache> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let dir = std::env::var_os("TOKCACHE_DIR").unwrap_or_else(|| "temp".into());
        Cache::builder(dir).open_or_ram_only().0
    })
}
