//! The Bloom filter of a full index (format 7): a miss of a key the index does not hold reads
//! one 32-byte block of this filter, 1 byte per entry, instead of the index's slots, 11 bytes
//! per entry. At 1M entries the filter is 1 MB, far likelier than the slots (11 MB) to be in
//! the CPU cache.
//!
//! A split-block Bloom filter: the filter is an array of 256-bit blocks, each eight 32-bit
//! words; an entry picks a block and sets one bit in each word of it. It holds *slot hashes*
//! (the 28 bits of a key hash an index slot keeps), because that is what compaction knows of
//! the entries it carries over without reading their records. So it answers "may a slot
//! carry this slot hash": never no for one that does, yes for about 3% of those that do
//! not (8 bits per entry: 3.3% in `tests::false_positive_rate`).

/// Bytes of a block: one 32-byte half of a cache line.
pub(crate) const BLOCK: usize = 32;
/// Bits of a slot hash.
const SLOT_HASH_BITS: u32 = 28;
/// Bits of filter per entry.
const BITS_PER_ENTRY: usize = 8;
/// Entries per block.
const PER_BLOCK: usize = BLOCK * 8 / BITS_PER_ENTRY;

/// Blocks of a filter of `entries` entries (0 for none: no filter).
pub(crate) fn blocks_for(entries: usize) -> usize {
    entries.div_ceil(PER_BLOCK)
}

/// The block of a slot hash, and the mixed hash that picks its bits ([`bit`]). The block
/// grows with the slot hash, as its home slot does, so that building the filter from an
/// index's slots (in slot hash order) fills it front to back; the bits come from the slot
/// hash mixed (murmur3's finalizer), as neighbours in one block differ only in their low bits.
#[inline]
fn locate(slot_hash: u32, blocks: usize) -> (usize, u64) {
    let block = (u64::from(slot_hash) * blocks as u64) >> SLOT_HASH_BITS;
    let mut m = u64::from(slot_hash);
    m ^= m >> 33;
    m = m.wrapping_mul(0xff51_afd7_ed55_8ccd);
    m ^= m >> 33;
    m = m.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    m ^= m >> 33;
    (block as usize, m)
}

/// The bit of word `i` of its block that the mixed hash `m` sets: bits `5i..5i + 5` of `m`
/// say which.
#[inline]
fn bit(m: u64, i: usize) -> u32 {
    1 << ((m >> (5 * i)) & 31)
}

/// The filter of these slot hashes, `blocks_for(count)` blocks, in its file form (words
/// little-endian).
pub(crate) fn build(slot_hashes: impl Iterator<Item = u32>, blocks: usize) -> Vec<u8> {
    let mut words = vec![[0u32; 8]; blocks];
    if blocks > 0 {
        for h in slot_hashes {
            let (block, key) = locate(h, blocks);
            let w = &mut words[block];
            w[0] |= bit(key, 0);
            w[1] |= bit(key, 1);
            w[2] |= bit(key, 2);
            w[3] |= bit(key, 3);
            w[4] |= bit(key, 4);
            w[5] |= bit(key, 5);
            w[6] |= bit(key, 6);
            w[7] |= bit(key, 7);
        }
    }
    let mut bytes = Vec::with_capacity(words.len() * BLOCK);
    for w in words.iter().flatten() {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    bytes
}

/// The filter section of an index, its length a multiple of [`BLOCK`] (an empty one: no
/// filter, which holds everything).
#[derive(Clone, Copy)]
pub(crate) struct Filter<'a>(pub &'a [u8]);

impl Filter<'_> {
    fn blocks(&self) -> usize {
        self.0.len() / BLOCK
    }

    fn block(&self, slot_hash: u32) -> Option<(&[u8], u64)> {
        let (block, key) = locate(slot_hash, self.blocks());
        Some((self.0.get(block * BLOCK..(block + 1) * BLOCK)?, key))
    }

    /// `false` only if no slot carries this slot hash.
    #[inline]
    pub(crate) fn may_hold(&self, slot_hash: u32) -> bool {
        let Some((block, key)) = self.block(slot_hash) else {
            return true;
        };
        block.chunks_exact(4).enumerate().all(|(i, w)| {
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            w & bit(key, i) != 0
        })
    }

    /// Starts reading the block of this slot hash (see [`crate::sys::prefetch`]).
    #[inline]
    pub(crate) fn touch(&self, slot_hash: u32) {
        if let Some((block, _)) = self.block(slot_hash) {
            crate::sys::prefetch(&block[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot hashes spread like those of random keys (28 bits).
    fn hashes(seed: u64, n: usize) -> Vec<u32> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 36) as u32 // the top 28 bits
            })
            .collect()
    }

    #[test]
    fn holds_every_hash_it_was_built_of() {
        for n in [1, 31, 32, 33, 1000, 100_000] {
            let held = hashes(n as u64, n);
            let bytes = build(held.iter().copied(), blocks_for(n));
            assert_eq!(bytes.len(), blocks_for(n) * BLOCK);
            let f = Filter(&bytes);
            assert!(held.iter().all(|&h| f.may_hold(h)), "{n} entries");
        }
    }

    /// The bits that docs/format.md specifies, computed as it says: files written by one
    /// release are read by the next, so a change here needs a new format version.
    #[test]
    fn layout_is_the_specified_one() {
        let blocks = 5u64;
        let hashes = [0u32, 1, 77, 0x00ab_cdef, 0x0800_0000, 0x0fff_ffff];
        let bytes = build(hashes.iter().copied(), blocks as usize);
        let mut expected = vec![0u8; blocks as usize * BLOCK];
        for &h in &hashes {
            let block = (u64::from(h) * blocks) >> 28;
            let mut m = u64::from(h);
            m ^= m >> 33;
            m = m.wrapping_mul(0xff51afd7ed558ccd);
            m ^= m >> 33;
            m = m.wrapping_mul(0xc4ceb9fe1a85ec53);
            m ^= m >> 33;
            for i in 0..8 {
                let bit = (m >> (5 * i)) & 31;
                let byte = block as usize * BLOCK + 4 * i + bit as usize / 8;
                expected[byte] |= 1 << (bit % 8);
            }
        }
        assert_eq!(bytes, expected);
        assert_eq!(locate(0x0fff_ffff, 5).0, 4, "the last block");
    }

    #[test]
    fn false_positive_rate() {
        let n = 200_000;
        let held = hashes(1, n);
        let bytes = build(held.iter().copied(), blocks_for(n));
        let f = Filter(&bytes);
        let probes = hashes(2, n);
        let set: std::collections::HashSet<u32> = held.into_iter().collect();
        let absent: Vec<u32> = probes.into_iter().filter(|h| !set.contains(h)).collect();
        let yes = absent.iter().filter(|&&h| f.may_hold(h)).count();
        let rate = yes as f64 / absent.len() as f64;
        assert!((0.005..0.04).contains(&rate), "false positive rate {rate}");
    }

    #[test]
    fn no_filter_holds_everything() {
        let f = Filter(&[]);
        assert!(hashes(3, 100).into_iter().all(|h| f.may_hold(h)));
        assert!(build(hashes(4, 10).into_iter(), 0).is_empty());
    }
}
