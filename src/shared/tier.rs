//! The shared tier on Redis: lookups on the caller's thread with a bounded wait, writes through
//! the background writer, and the connections both use, with a back-off after a failure.

use redis::{RedisError, RedisResult};
use std::sync::Arc;

use super::link::Link;
use super::writer::{Op, Writer};
use super::{Counters, Settings, SharedStats};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::keys::{Key, KeyBytes};
use crate::legacy::{self, OriginalEntry};
use crate::value::Stored;

/// A shared tier as one process uses it.
pub(crate) struct Tier {
    link: Arc<Link>,
    writer: Writer,
    clock: Arc<dyn Clock>,
    ttl_secs: f64,
}

impl Tier {
    /// Checks the settings and starts the writer; connects only when first used, so that a
    /// server down at open costs nothing then.
    /// Counts this tier's errors and drops in `slot` too (the pool statistics).
    pub(crate) fn count_into(&self, slot: Arc<crate::pool::Slot>) {
        let _ = self.link.counters.pool.set(slot);
    }

    pub(crate) fn open(settings: &Settings, clock: Arc<dyn Clock>, ttl_secs: f64) -> Result<Self> {
        settings.check()?;
        let link = Arc::new(Link::new(settings)?);
        let writer = Writer::start(
            Arc::clone(&link),
            Arc::clone(&clock),
            ttl_secs,
            settings.queue,
        );
        Ok(Self {
            link,
            writer,
            clock,
            ttl_secs,
        })
    }

    /// The live entry of `key` in the shared tier: its JSON object checked to be an entry of
    /// this very prefix and key (the full key is compared: a digest collision, or another
    /// program's bytes under our name, is a miss and counted as an error), and not expired.
    pub(crate) fn get(&self, prefix: &str, key: &Key<'_>) -> Option<OriginalEntry> {
        let name = self.link.key_of(prefix, key);
        let counters = &self.link.counters;
        let bytes = self
            .link
            .with_connection(|c| redis::cmd("GET").arg(&name).query::<Option<Vec<u8>>>(c))?;
        let Some(bytes) = bytes else {
            Counters::add(&counters.misses, 1);
            return None;
        };
        let entry = match legacy::check_entry(bytes) {
            Ok(e) if e.prefix == prefix && key.eq_bytes(e.key.as_bytes()) => e,
            Ok(_) => return self.foreign(&name, "an entry of another key"),
            Err(why) => return self.foreign(&name, &why),
        };
        if self.clock.now() - entry.timestamp > self.ttl_secs {
            Counters::add(&counters.misses, 1);
            return None;
        }
        Counters::add(&counters.hits, 1);
        Some(entry)
    }

    fn foreign(&self, name: &str, why: &str) -> Option<OriginalEntry> {
        log::debug!("shared tier: {name} does not hold our entry: {why}");
        self.link.counters.failure(false);
        None
    }

    /// Hands an entry set here to the writer (never waits: dropped and counted when the queue
    /// is full).
    pub(crate) fn put(&self, prefix: &str, key: &Key<'_>, value: &Stored, timestamp: f64) {
        self.writer.push(Op::Put {
            prefix: prefix.into(),
            key: key.to_vec(),
            value: value.clone(),
            timestamp,
        });
    }

    /// Hands an entry of the original's form (an import) to the writer, as it is.
    pub(crate) fn put_original(&self, entry: &OriginalEntry) {
        self.writer.push(Op::Original {
            name: self
                .link
                .key_of(&entry.prefix, &Key::whole(entry.key.as_bytes())),
            json: entry.bytes.clone(),
            timestamp: entry.timestamp,
        });
    }

    /// Hands a removal to the writer (in order with the sets before it).
    pub(crate) fn remove(&self, prefix: &str, key: &Key<'_>) {
        self.writer.push(Op::Remove {
            prefix: prefix.into(),
            key: key.to_vec(),
        });
    }

    /// Waits until what was handed to the writer before is written (or dropped: a tier that is
    /// down does not hold this up past its timeouts).
    pub(crate) fn flush(&self) {
        self.writer.flush();
    }

    /// Deletes every key of this cache's namespace, on every master of a cluster, by `SCAN` in
    /// batches (never `FLUSHDB`: other data of the database stays). Returns how many.
    pub(crate) fn clear(&self) -> Result<u64> {
        self.flush();
        let fail = |e: RedisError| Error::Shared {
            reason: format!("clear {}: {e}", self.link.pattern()),
        };
        let servers = self.link.servers().map_err(fail)?;
        let mut removed = 0;
        for info in servers {
            let client = redis::Client::open(info).map_err(fail)?;
            let mut conn = client.get_connection().map_err(fail)?;
            removed += clear_server(&mut conn, &self.link.pattern()).map_err(fail)?;
        }
        Ok(removed)
    }

    pub(crate) fn stats(&self) -> SharedStats {
        self.link.counters.snapshot(self.writer.queued())
    }
}

/// Deletes the keys matching `pattern` on one server; returns how many.
fn clear_server(conn: &mut redis::Connection, pattern: &str) -> RedisResult<u64> {
    let mut cursor = 0u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)?;
        if !keys.is_empty() {
            // One DEL per key: in a cluster, keys of different slots cannot share a command.
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("DEL").arg(k);
            }
            let counts: Vec<u64> = pipe.query(conn)?;
            removed += counts.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
