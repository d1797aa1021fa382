//! The shared tier: a Redis server or Redis Cluster that the caches of several machines share,
//! below each machine's own two tiers (RAM, then the mapped directory). Local first and best
//! effort: a local miss asks it, a hit there is checked and kept locally; a `set` is written
//! locally and handed to a background writer that pipelines it there. Its failures never fail
//! a cache operation (docs/redis.md).
//!
//! Built with the `redis` feature; without it, [`Tier`] has no values and the cache never has
//! one.

#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
use crate::error::{Error, Result};

#[cfg(feature = "redis")]
mod link;
#[cfg(not(feature = "redis"))]
mod off;
#[cfg(feature = "redis")]
mod tier;
#[cfg(feature = "redis")]
mod writer;

#[cfg(not(feature = "redis"))]
pub(crate) use off::Tier;
#[cfg(feature = "redis")]
pub(crate) use tier::Tier;

/// The default namespace: Redis keys are `tokcache:{prefix}_{md5(key)}`.
pub const DEFAULT_NAMESPACE: &str = "tokcache";

/// How the shared tier is reached, as [`crate::CacheBuilder`] was told.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Settings {
    /// One server's URL, or the cluster's nodes (some of them are enough).
    pub(crate) nodes: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) namespace: String,
    /// How long a lookup, a connection or a write may wait for Redis.
    pub(crate) timeout: Duration,
    /// Entries waiting for the background writer; more are dropped from the shared tier.
    pub(crate) queue: usize,
}

impl Settings {
    pub(crate) fn new(nodes: Vec<String>, cluster: bool) -> Self {
        Self {
            nodes,
            cluster,
            namespace: DEFAULT_NAMESPACE.into(),
            timeout: Duration::from_millis(5),
            queue: 100_000,
        }
    }

    #[cfg(feature = "redis")]
    /// `TOKCACHE_REDIS` / `--redis`: a URL (`redis://host:port/db`, `rediss://...`), or a
    /// comma-separated list of a Redis Cluster's nodes (one node: end it with a comma).
    pub(crate) fn parse(spec: &str) -> Self {
        if spec.contains(',') {
            let nodes = spec.split(',').map(str::trim).filter(|s| !s.is_empty());
            Self::new(nodes.map(String::from).collect(), true)
        } else if spec.trim().is_empty() {
            Self::new(Vec::new(), false)
        } else {
            Self::new(vec![spec.trim().to_string()], false)
        }
    }

    #[cfg(feature = "redis")]
    /// Whether the settings are usable: URLs that parse, a namespace of 1-64 of
    /// `[A-Za-z0-9_.:-]` (no glob characters: it is matched by `SCAN`), a timeout and a queue.
    pub(crate) fn check(&self) -> Result<()> {
        let ns = &self.namespace;
        let ok_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
        if ns.is_empty() || ns.len() > 64 || !ns.bytes().all(ok_byte) {
            return Err(Error::InvalidSetting {
                name: "redis namespace",
                reason: format!("{ns:?} is not 1-64 of [A-Za-z0-9_.:-]"),
            });
        }
        if self.nodes.is_empty() {
            return Err(Error::InvalidSetting {
                name: "redis",
                reason: "no server URL given".into(),
            });
        }
        for node in &self.nodes {
            redis::IntoConnectionInfo::into_connection_info(node.as_str()).map_err(|e| {
                Error::InvalidSetting {
                    name: "redis",
                    reason: format!("{node}: {e}"),
                }
            })?;
        }
        if self.timeout.is_zero() || self.queue == 0 {
            return Err(Error::InvalidSetting {
                name: "redis",
                reason: "the timeout and the queue must be above zero".into(),
            });
        }
        Ok(())
    }
}

/// What this process's shared tier did, since the cache was opened here
/// ([`crate::Stats::shared`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let local = tokcache::Cache::open(dir.path())?;
/// assert!(local.get_stats().shared.is_none()); // no shared tier, no shared statistics
/// # #[cfg(feature = "redis")]
/// # {
/// // A tier whose server is down: lookups miss and are counted, never fail.
/// let cache = tokcache::Cache::builder(dir.path()).redis("redis://127.0.0.1:1/0").open()?;
/// assert_eq!(cache.get::<i32>("test", "k"), None);
/// let shared = cache.get_stats().shared.unwrap();
/// assert_eq!(shared.hits, 0);
/// assert_eq!(shared.errors + shared.timeouts + shared.skipped, 1);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SharedStats {
    /// Local misses answered by the shared tier (its entry is now local too).
    pub hits: u64,
    /// Local misses the shared tier did not have either (or had expired).
    pub misses: u64,
    /// Requests that failed (connection refused or lost, an error reply), and entries found
    /// under a key of ours that were not ours (foreign bytes, another key): each a miss.
    pub errors: u64,
    /// Requests that took longer than the timeout (a stopped or overloaded server).
    pub timeouts: u64,
    /// Lookups not sent because the tier was backing off after a failure.
    pub skipped: u64,
    /// Entries (and removals) the writer has written to the shared tier.
    pub written: u64,
    /// Entries (and removals) not written: the queue was full, or the tier was down.
    pub dropped: u64,
    /// Entries waiting for the writer now.
    pub queued: u64,
}

/// The counters behind [`SharedStats`], bumped by readers and the writer.
#[cfg(feature = "redis")]
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// The pool statistics' slot of the cache handle, where errors and drops are counted too.
    pub(crate) pool: std::sync::OnceLock<std::sync::Arc<crate::pool::Slot>>,
}

#[cfg(feature = "redis")]
impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed operation (`timeout`: one that timed out), here and in the pool.
    pub(crate) fn failure(&self, timeout: bool) {
        Self::add(
            if timeout {
                &self.timeouts
            } else {
                &self.errors
            },
            1,
        );
        self.in_pool(crate::pool::Counter::SharedError, 1);
    }

    /// Counts `n` entries the writer dropped, here and in the pool.
    pub(crate) fn drop_n(&self, n: u64) {
        Self::add(&self.dropped, n);
        self.in_pool(crate::pool::Counter::SharedDrop, n);
    }

    fn in_pool(&self, counter: crate::pool::Counter, n: u64) {
        if let Some(p) = self.pool.get() {
            p.add_n(counter, n);
        }
    }

    pub(crate) fn snapshot(&self, queued: u64) -> SharedStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SharedStats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            skipped: get(&self.skipped),
            written: get(&self.written),
            dropped: get(&self.dropped),
            queued,
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_a_cluster() {
        let one = Settings::parse("redis://127.0.0.1:6379/2");
        assert_eq!((one.nodes.len(), one.cluster), (1, false));
        let three = Settings::parse("redis://a:1, redis://b:2,redis://c:3");
        assert_eq!(three.nodes, ["redis://a:1", "redis://b:2", "redis://c:3"]);
        assert!(three.cluster);
        let seed = Settings::parse("redis://a:1,");
        assert_eq!((seed.nodes.len(), seed.cluster), (1, true));
        // An empty TOKCACHE_REDIS: no shared tier.
        assert!(Settings::parse(" ").nodes.is_empty());
    }

    #[test]
    fn namespaces_are_checked() {
        let mut s = Settings::parse("redis://a:1");
        assert!(s.check().is_ok());
        for bad in ["", "a*", "a b", "{x}", &"n".repeat(65)] {
            s.namespace = bad.into();
            assert!(s.check().is_err(), "{bad:?}");
        }
        s.namespace = "team-a:tok.v1".into();
        assert!(s.check().is_ok());
    }
}
