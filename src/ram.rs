//! The RAM tier: decoded values of recently used entries, bounded in count and in bytes,
//! evicted by CLOCK (an LRU approximation whose hits take only a shared lock). Sharded by key
//! hash. The cache keeps long keys out of it when their records are on disk (`cache/mod.rs`):
//! a hit of such a key costs about the same from the mapping, without a private copy.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::keys::{HashKeyed, Key, KeyBytes};
use crate::value::Stored;

struct Entry {
    hash: u64,
    prefix: Vec<u8>,
    key: Vec<u8>,
    value: Stored,
    timestamp: f64,
    referenced: AtomicBool,
}

impl Entry {
    /// What the entry holds in memory, roughly: its buffers and its slot.
    fn bytes(&self) -> usize {
        entry_bytes(self.prefix.capacity(), self.key.capacity(), &self.value)
    }

    /// Makes this entry the given one, reusing its buffers: a disk hit that evicts another
    /// entry then allocates nothing for the key (unless it is longer, or the buffer kept is
    /// far larger than needed).
    fn refill(&mut self, hash: u64, prefix: &str, key: &Key<'_>, value: Stored, timestamp: f64) {
        reuse(&mut self.prefix, &[prefix.as_bytes()]);
        reuse(&mut self.key, key.parts());
        self.hash = hash;
        self.value = value;
        self.timestamp = timestamp;
        *self.referenced.get_mut() = false;
    }
}

/// The memory an entry of these sizes takes: buffers, value, its slot and table entry.
fn entry_bytes(prefix: usize, key: usize, value: &Stored) -> usize {
    const SLOT: usize = std::mem::size_of::<Entry>() + 16;
    let value = match value {
        Stored::Int(_) | Stored::Float(_) => 0,
        Stored::Tokens(t) => t.len() * 4 + 16,
        Stored::Json(j) => j.len() + 16,
    };
    prefix + key + value + SLOT
}

/// Copies `parts`, joined, into `buf`, keeping its allocation unless that is over 4 times
/// (and 1 KiB past) what they need: one long key must not leave a large buffer behind.
fn reuse(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if buf.capacity() > len.saturating_mul(4).max(1024) {
        *buf = Vec::with_capacity(len);
    }
    buf.clear();
    for p in parts {
        buf.extend_from_slice(p);
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
    /// What the entries hold ([`Entry::bytes`]), and the most they may.
    bytes: usize,
    max_bytes: usize,
    evictions: u64,
}

impl Shard {
    /// The index of the next entry CLOCK evicts (clearing the bits it passes), other than
    /// `keep`. The shard holds at least one entry besides `keep`.
    fn victim(&mut self, keep: Option<usize>) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.entries.len();
            if Some(i) == keep {
                continue;
            }
            if !std::mem::take(self.entries[i].referenced.get_mut()) {
                return i;
            }
        }
    }

    /// Removes entry `i`; returns where the entry that was last is now.
    fn remove_at(&mut self, i: usize) -> usize {
        let last = self.entries.len() - 1;
        let gone = self.entries.swap_remove(i);
        self.bytes -= gone.bytes();
        self.by_hash.remove(&gone.hash);
        if let Some(moved) = self.entries.get(i) {
            self.by_hash.insert(moved.hash, i);
        }
        if self.hand >= self.entries.len() {
            self.hand = 0;
        }
        if last == i { usize::MAX } else { i }
    }

    /// Evicts entries other than `keep` until the shard is within its byte bound.
    fn shrink(&mut self, mut keep: usize) {
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let last = self.entries.len() - 1;
            let v = self.victim(Some(keep));
            let moved_to = self.remove_at(v);
            if keep == last && moved_to != usize::MAX {
                keep = moved_to;
            }
            self.evictions += 1;
        }
    }
}

pub(crate) struct RamTier {
    shards: Box<[RwLock<Shard>]>,
    capacity: usize,
}

impl RamTier {
    /// A tier of `capacity` entries and at most about `max_bytes` bytes, in 8 shards from 64
    /// entries on (threads that look up or insert at once then rarely take the same lock),
    /// else in one. An entry over a shard's share of `max_bytes` is not kept.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        let n = if capacity >= 64 { 8 } else { 1 };
        let shard = |i| Shard {
            capacity: capacity / n + usize::from(i < capacity % n),
            max_bytes: max_bytes / n,
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
    pub(crate) fn get<K: KeyBytes + ?Sized>(
        &self,
        hash: u64,
        prefix: &str,
        key: &K,
    ) -> Option<(Stored, f64)> {
        if self.capacity == 0 {
            return None;
        }
        let shard = self.shard(hash).read();
        let e = &shard.entries[*shard.by_hash.get(&hash)?];
        if !key.eq_bytes(&e.key) || e.prefix != prefix.as_bytes() {
            return None;
        }
        // Stored only when clear: hits on a hot entry from several threads then only read
        // its cache line.
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some((e.value.clone(), e.timestamp))
    }

    /// Returns how many entries it evicted to make room.
    pub(crate) fn insert(
        &self,
        hash: u64,
        prefix: &str,
        key: &Key<'_>,
        value: Stored,
        timestamp: f64,
    ) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let mut guard = self.shard(hash).write();
        let shard = &mut *guard;
        if entry_bytes(prefix.len(), key.len(), &value) > shard.max_bytes {
            // Too large for the tier: served from where it is stored instead.
            if let Some(&i) = shard.by_hash.get(&hash) {
                shard.remove_at(i);
            }
            return 0;
        }
        let evicted_before = shard.evictions;
        let i = if let Some(&i) = shard.by_hash.get(&hash) {
            shard.bytes -= shard.entries[i].bytes();
            shard.entries[i].refill(hash, prefix, key, value, timestamp);
            i
        } else if shard.entries.len() < shard.capacity {
            shard.by_hash.insert(hash, shard.entries.len());
            shard.entries.push(Entry {
                hash,
                prefix: prefix.as_bytes().to_vec(),
                key: key.to_vec(),
                value,
                timestamp,
                referenced: AtomicBool::new(false),
            });
            shard.entries.len() - 1
        } else {
            let i = shard.victim(None);
            let e = &mut shard.entries[i];
            shard.bytes -= e.bytes();
            shard.by_hash.remove(&e.hash);
            shard.by_hash.insert(hash, i);
            e.refill(hash, prefix, key, value, timestamp);
            shard.evictions += 1;
            i
        };
        shard.bytes += shard.entries[i].bytes();
        shard.shrink(i);
        shard.evictions - evicted_before
    }

    /// Bytes the entries hold (see `entry_bytes`).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.read().bytes).sum()
    }

    /// Drops the entry of this hash, whatever its key.
    pub(crate) fn remove(&self, hash: u64) {
        let mut guard = self.shard(hash).write();
        let shard = &mut *guard;
        if let Some(&i) = shard.by_hash.get(&hash) {
            shard.remove_at(i);
        }
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.write();
            *s = Shard {
                capacity: s.capacity,
                max_bytes: s.max_bytes,
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
        let ram = RamTier::new(3, usize::MAX);
        for (h, k) in [(1, "a"), (2, "b"), (3, "c")] {
            ram.insert(
                h,
                "p",
                &Key::whole(k.as_bytes()),
                Stored::Int(h as i64),
                0.0,
            );
        }
        assert!(ram.get(1, "p", "a".as_bytes()).is_some()); // a is referenced
        ram.insert(4, "p", &Key::whole("d".as_bytes()), Stored::Int(4), 0.0);
        assert_eq!(ram.len(), 3);
        assert!(
            ram.get(2, "p", "b".as_bytes()).is_none(),
            "b was the least recently used"
        );
        assert!(ram.get(1, "p", "a".as_bytes()).is_some());
        assert!(
            ram.get(1, "p", "other".as_bytes()).is_none(),
            "same hash, other key"
        );
        assert_eq!(ram.evictions(), 1);
        ram.remove(1);
        assert_eq!(ram.len(), 2);
        ram.clear();
        assert_eq!(ram.len(), 0);
    }

    #[test]
    fn sharded_tiers_hold_exactly_their_capacity() {
        for capacity in [63, 64, 100, 1001, 5000] {
            let ram = RamTier::new(capacity, usize::MAX);
            let mut h = 0x9e37_79b9_7f4a_7c15u64;
            let inserts = capacity * 20;
            for i in 0..inserts {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                ram.insert(
                    h,
                    "p",
                    &Key::whole(i.to_string().as_bytes()),
                    Stored::Int(i as i64),
                    0.0,
                );
            }
            assert_eq!(ram.len(), capacity, "capacity {capacity}");
            assert_eq!(ram.evictions(), (inserts - capacity) as u64);
            ram.clear();
            assert_eq!(ram.len(), 0);
            ram.insert(1, "p", &Key::whole("k".as_bytes()), Stored::Int(1), 0.0);
            assert_eq!(
                ram.get(1, "p", "k".as_bytes()).map(|(v, _)| v),
                Some(Stored::Int(1))
            );
        }
    }

    #[test]
    fn evicted_buffers_are_reused_unless_far_too_large() {
        let ram = RamTier::new(1, usize::MAX);
        let key_capacity = |ram: &RamTier| ram.shards[0].read().entries[0].key.capacity();
        ram.insert(
            1,
            "p",
            &Key::whole("k".repeat(500).as_bytes()),
            Stored::Int(1),
            0.0,
        );
        let first = key_capacity(&ram);
        ram.insert(2, "p", &Key::whole("short".as_bytes()), Stored::Int(2), 0.0); // evicts: same buffer
        assert_eq!(key_capacity(&ram), first);
        ram.insert(
            3,
            "p",
            &Key::whole("x".repeat(100_000).as_bytes()),
            Stored::Int(3),
            0.0,
        );
        assert!(ram.get(3, "p", "x".repeat(100_000).as_bytes()).is_some());
        ram.insert(4, "p", &Key::whole("short".as_bytes()), Stored::Int(4), 0.0); // a 100 KB buffer is not kept
        assert!(key_capacity(&ram) <= 1024, "{}", key_capacity(&ram));
        assert_eq!(
            ram.get(4, "p", "short".as_bytes()).map(|(v, _)| v),
            Some(Stored::Int(4))
        );
        assert!(ram.get(3, "p", "x".repeat(100_000).as_bytes()).is_none());
    }

    /// The byte bound holds whatever the sizes: large entries evict others (CLOCK order), an
    /// entry over a shard's share is not kept (and drops an older one of its key), and the
    /// count of bytes stays exact through overwrites, removals and clears.
    #[test]
    fn bounded_in_bytes() {
        let ram = RamTier::new(1000, 8 * 100_000);
        let per_shard = 100_000;
        let big = |n: usize| "k".repeat(n);
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2000 {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            let key = format!("{i}:{}", big(i % 40_000));
            ram.insert(
                h,
                "p",
                &Key::whole(key.as_bytes()),
                Stored::Json(big(i % 3000).into()),
                0.0,
            );
            assert!(ram.bytes() <= 8 * per_shard, "{} after {i}", ram.bytes());
            let exact: usize = ram
                .shards
                .iter()
                .map(|s| s.read().entries.iter().map(Entry::bytes).sum::<usize>())
                .sum();
            assert_eq!(ram.bytes(), exact);
        }
        assert!(ram.len() < 1000);
        // Too large: not kept, and an older entry of the key goes.
        ram.insert(1, "p", &Key::whole("k".as_bytes()), Stored::Int(1), 0.0);
        assert!(ram.get(1, "p", "k".as_bytes()).is_some());
        ram.insert(
            1,
            "p",
            &Key::whole("k".as_bytes()),
            Stored::Json(big(200_000).into()),
            0.0,
        );
        assert!(ram.get(1, "p", "k".as_bytes()).is_none());
        ram.remove(2);
        ram.clear();
        assert_eq!((ram.len(), ram.bytes()), (0, 0));
    }
}
