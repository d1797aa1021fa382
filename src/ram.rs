//! The RAM tier: decoded values of recently used entries, bounded in count, evicted by CLOCK
//! (an LRU approximation whose hits take only a shared lock). Sharded by key hash.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::keys::HashKeyed;
use crate::value::Stored;

struct Entry {
    hash: u64,
    prefix: String,
    key: String,
    value: Stored,
    timestamp: f64,
    referenced: AtomicBool,
}

impl Entry {
    /// Makes this entry the given one, reusing its buffers: a disk hit that evicts another
    /// entry then allocates nothing for the key (unless it is longer, or the buffer kept is
    /// far larger than needed).
    fn refill(&mut self, hash: u64, prefix: &str, key: &str, value: Stored, timestamp: f64) {
        reuse(&mut self.prefix, prefix);
        reuse(&mut self.key, key);
        self.hash = hash;
        self.value = value;
        self.timestamp = timestamp;
        *self.referenced.get_mut() = false;
    }
}

/// Copies `from` into `buf`, keeping its allocation unless that is over 4 times (and 1 KiB
/// past) what `from` needs: one long key must not leave a large buffer behind.
fn reuse(buf: &mut String, from: &str) {
    if buf.capacity() > from.len().saturating_mul(4).max(1024) {
        *buf = from.to_owned();
    } else {
        buf.clear();
        buf.push_str(from);
    }
}

/// A part of the tier, with its own lock and its own CLOCK over its share of the capacity.
/// Its counts are plain fields under its lock: a counter shared by the shards would be written
/// by every thread's inserts.
#[derive(Default)]
struct Shard {
    entries: Vec<Entry>,
    by_hash: HashKeyed<usize>,
    hand: usize,
    capacity: usize,
    evictions: u64,
}

pub(crate) struct RamTier {
    shards: Box<[RwLock<Shard>]>,
    capacity: usize,
}

impl RamTier {
    /// A tier of `capacity` entries, in 8 shards from 64 entries on (threads that look up or
    /// insert at once then rarely take the same lock), else in one.
    pub(crate) fn new(capacity: usize) -> Self {
        let n = if capacity >= 64 { 8 } else { 1 };
        let shard = |i| Shard {
            capacity: capacity / n + usize::from(i < capacity % n),
            ..Shard::default()
        };
        Self {
            shards: (0..n).map(|i| RwLock::new(shard(i))).collect(),
            capacity,
        }
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The table index uses the low bits; shards use the high ones.
        &self.shards[(hash >> 58) as usize % self.shards.len()]
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().entries.len()).sum()
    }

    /// Entries evicted to make room, since the tier was made.
    pub(crate) fn evictions(&self) -> u64 {
        self.shards.iter().map(|s| s.read().evictions).sum()
    }

    /// The value and its timestamp, if present.
    pub(crate) fn get(&self, hash: u64, prefix: &str, key: &str) -> Option<(Stored, f64)> {
        if self.capacity == 0 {
            return None;
        }
        let shard = self.shard(hash).read();
        let e = &shard.entries[*shard.by_hash.get(&hash)?];
        if &*e.key != key || &*e.prefix != prefix {
            return None;
        }
        // Stored only when clear: hits on a hot entry from several threads then only read
        // its cache line.
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some((e.value.clone(), e.timestamp))
    }

    pub(crate) fn insert(&self, hash: u64, prefix: &str, key: &str, value: Stored, timestamp: f64) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.shard(hash).write();
        let shard = &mut *guard;
        if let Some(&i) = shard.by_hash.get(&hash) {
            shard.entries[i].refill(hash, prefix, key, value, timestamp);
            return;
        }
        if shard.entries.len() < shard.capacity {
            shard.by_hash.insert(hash, shard.entries.len());
            shard.entries.push(Entry {
                hash,
                prefix: prefix.to_owned(),
                key: key.to_owned(),
                value,
                timestamp,
                referenced: AtomicBool::new(false),
            });
            return;
        }
        loop {
            let i = shard.hand;
            shard.hand = (shard.hand + 1) % shard.entries.len();
            let e = &mut shard.entries[i];
            if !std::mem::take(e.referenced.get_mut()) {
                shard.by_hash.remove(&e.hash);
                shard.by_hash.insert(hash, i);
                e.refill(hash, prefix, key, value, timestamp);
                shard.evictions += 1;
                return;
            }
        }
    }

    /// Drops the entry of this hash, whatever its key.
    pub(crate) fn remove(&self, hash: u64) {
        let mut guard = self.shard(hash).write();
        let shard = &mut *guard;
        let Some(i) = shard.by_hash.remove(&hash) else {
            return;
        };
        shard.entries.swap_remove(i);
        if let Some(moved) = shard.entries.get(i) {
            shard.by_hash.insert(moved.hash, i);
        }
        if shard.hand >= shard.entries.len() {
            shard.hand = 0;
        }
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.write();
            *s = Shard {
                capacity: s.capacity,
                evictions: s.evictions,
                ..Shard::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_clock_order() {
        let ram = RamTier::new(3);
        for (h, k) in [(1, "a"), (2, "b"), (3, "c")] {
            ram.insert(h, "p", k, Stored::Int(h as i64), 0.0);
        }
        assert!(ram.get(1, "p", "a").is_some()); // a is referenced
        ram.insert(4, "p", "d", Stored::Int(4), 0.0);
        assert_eq!(ram.len(), 3);
        assert!(
            ram.get(2, "p", "b").is_none(),
            "b was the least recently used"
        );
        assert!(ram.get(1, "p", "a").is_some());
        assert!(ram.get(1, "p", "other").is_none(), "same hash, other key");
        assert_eq!(ram.evictions(), 1);
        ram.remove(1);
        assert_eq!(ram.len(), 2);
        ram.clear();
        assert_eq!(ram.len(), 0);
    }

    #[test]
    fn sharded_tiers_hold_exactly_their_capacity() {
        for capacity in [63, 64, 100, 1001, 5000] {
            let ram = RamTier::new(capacity);
            let mut h = 0x9e37_79b9_7f4a_7c15u64;
            let inserts = capacity * 20;
            for i in 0..inserts {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                ram.insert(h, "p", &i.to_string(), Stored::Int(i as i64), 0.0);
            }
            assert_eq!(ram.len(), capacity, "capacity {capacity}");
            assert_eq!(ram.evictions(), (inserts - capacity) as u64);
            ram.clear();
            assert_eq!(ram.len(), 0);
            ram.insert(1, "p", "k", Stored::Int(1), 0.0);
            assert_eq!(ram.get(1, "p", "k").map(|(v, _)| v), Some(Stored::Int(1)));
        }
    }

    #[test]
    fn evicted_buffers_are_reused_unless_far_too_large() {
        let ram = RamTier::new(1);
        let key_capacity = |ram: &RamTier| ram.shards[0].read().entries[0].key.capacity();
        ram.insert(1, "p", &"k".repeat(500), Stored::Int(1), 0.0);
        let first = key_capacity(&ram);
        ram.insert(2, "p", "short", Stored::Int(2), 0.0); // evicts: same buffer
        assert_eq!(key_capacity(&ram), first);
        ram.insert(3, "p", &"x".repeat(100_000), Stored::Int(3), 0.0);
        assert!(ram.get(3, "p", &"x".repeat(100_000)).is_some());
        ram.insert(4, "p", "short", Stored::Int(4), 0.0); // a 100 KB buffer is not kept
        assert!(key_capacity(&ram) <= 1024, "{}", key_capacity(&ram));
        assert_eq!(
            ram.get(4, "p", "short").map(|(v, _)| v),
            Some(Stored::Int(4))
        );
        assert!(ram.get(3, "p", &"x".repeat(100_000)).is_none());
    }
}
