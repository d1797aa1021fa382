//! The tail table: where the newest record of each key appended since the index was written
//! lies in the active segment. One slot per key hash; keys whose 64-bit hashes collide (rare,
//! and harmless) share a small overflow list.

use std::collections::hash_map::Entry;

use crate::keys::HashKeyed;

/// A record of the active segment, as the tail table keeps it: 8 bytes, so that the table of
/// a large tail (built on every open) stays small.
#[derive(Clone, Copy, Debug)]
pub(super) struct TailLoc {
    pub(super) off: u32,
    /// The record's length; the top bit says it is a removal (records are under 2^31 bytes).
    len_and_removal: u32,
}

const REMOVAL: u32 = 1 << 31;

impl TailLoc {
    pub(super) fn new(off: u32, len: u32, tombstone: bool) -> Self {
        debug_assert!(len < REMOVAL);
        let flag = if tombstone { REMOVAL } else { 0 };
        Self {
            off,
            len_and_removal: len | flag,
        }
    }

    pub(super) fn len(&self) -> u32 {
        self.len_and_removal & !REMOVAL
    }

    pub(super) fn tombstone(&self) -> bool {
        self.len_and_removal & REMOVAL != 0
    }
}

#[derive(Clone, Default)]
pub(super) struct Tail {
    first: HashKeyed<TailLoc>,
    more: Vec<(u64, TailLoc)>,
}

impl Tail {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            first: HashKeyed::with_capacity_and_hasher(n, Default::default()),
            more: Vec::new(),
        }
    }

    /// The records of every key with this hash.
    pub(super) fn candidates(&self, hash: u64) -> impl Iterator<Item = &TailLoc> {
        let more = self
            .more
            .iter()
            .filter(move |(h, _)| *h == hash)
            .map(|(_, l)| l);
        self.first.get(&hash).into_iter().chain(more)
    }

    /// The records at or past offset `start`.
    pub(super) fn since(&self, start: u32) -> Self {
        let mut first = self.first.clone();
        first.retain(|_, l| l.off >= start);
        let more = self.more.iter().filter(|(_, l)| l.off >= start).copied();
        Self {
            first,
            more: more.collect(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &TailLoc)> {
        let more = self.more.iter().map(|(h, l)| (*h, l));
        self.first.iter().map(|(h, l)| (*h, l)).chain(more)
    }

    /// Records `loc` as the newest record of its key: it replaces the record for which
    /// `same_key` holds, if any.
    pub(super) fn upsert(
        &mut self,
        hash: u64,
        loc: TailLoc,
        mut same_key: impl FnMut(&TailLoc) -> bool,
    ) {
        match self.first.entry(hash) {
            Entry::Vacant(e) => {
                e.insert(loc);
            }
            Entry::Occupied(mut e) if same_key(e.get()) => *e.get_mut() = loc,
            Entry::Occupied(_) => match self
                .more
                .iter_mut()
                .find(|(h, l)| *h == hash && same_key(l))
            {
                Some(m) => m.1 = loc,
                None => self.more.push((hash, loc)),
            },
        }
    }
}
