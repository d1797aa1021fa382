//! The Bloom filter of a full index (format 7): a miss of a key the index does not hold reads
//! one 32-byte block of this filter, 1 byte per entry, instead of the index's slots, 11 bytes
//! per entry. At 1M entries the filter is 1 MB, which stays in the CPU cache of a process
//! that looks up keys; the slots (11 MB) do not.
//!
//! A split-block Bloom filter: the filter is an array of 256-bit blocks, each eight 32-bit
//! words; an entry picks a block and sets one bit in each word of it. It holds *slot hashes*
//! (the 28 bits of a key hash an index slot keeps), because that is what compaction knows of
//! the entries it carries over without reading their records. So it answers "may a slot
//! carry this slot hash": never no for one that does, yes for about 3% of those that do
//! not (8 bits per entry: 3.3% in `tests::false_positive_rate`).

/// Bytes of a block: one 32-byte half of a cache line.
pub(crate) const BLOCK: usize = 32;
/// Bits of filter per entry.
const BITS_PER_ENTRY: usize = 8;
/// Entries per block.
const PER_BLOCK: usize = BLOCK * 8 / BITS_PER_ENTRY;
/// Odd multipliers that pick each word's bit (those of Parquet's split-block filter).
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// Blocks of a filter of `entries` entries (0 for none: no filter).
pub(crate) fn blocks_for(entries: usize) -> usize {
    entries.div_ceil(PER_BLOCK)
}

/// The block of a slot hash, and its eight bits, one per word. The slot hash is mixed first
/// (murmur3's finalizer): slot hashes of one block would otherwise be neighbours.
#[inline]
fn locate(slot_hash: u32, blocks: usize) -> (usize, [u32; 8]) {
    let mut m = u64::from(slot_hash);
    m ^= m >> 33;
    m = m.wrapping_mul(0xff51_afd7_ed55_8ccd);
    m ^= m >> 33;
    m = m.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    m ^= m >> 33;
    let block = ((m >> 32) * blocks as u64) >> 32;
    let key = m as u32;
    (
        block as usize,
        SALT.map(|s| 1 << (key.wrapping_mul(s) >> 27)),
    )
}

/// The filter of these slot hashes, `blocks_for(count)` blocks, in its file form (words
/// little-endian).
pub(crate) fn build(slot_hashes: impl Iterator<Item = u32>, blocks: usize) -> Vec<u8> {
    let mut words = vec![[0u32; 8]; blocks];
    if blocks > 0 {
        for h in slot_hashes {
            let (block, bits) = locate(h, blocks);
            for (w, b) in words[block].iter_mut().zip(bits) {
                *w |= b;
            }
        }
    }
    words
        .iter()
        .flatten()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// The filter section of an index, its length a multiple of [`BLOCK`] (an empty one: no
/// filter, which holds everything).
#[derive(Clone, Copy)]
pub(crate) struct Filter<'a>(pub &'a [u8]);

impl Filter<'_> {
    fn blocks(&self) -> usize {
        self.0.len() / BLOCK
    }

    fn block(&self, slot_hash: u32) -> Option<(&[u8], [u32; 8])> {
        let (block, bits) = locate(slot_hash, self.blocks());
        Some((self.0.get(block * BLOCK..(block + 1) * BLOCK)?, bits))
    }

    /// `false` only if no slot carries this slot hash.
    #[inline]
    pub(crate) fn may_hold(&self, slot_hash: u32) -> bool {
        let Some((block, bits)) = self.block(slot_hash) else {
            return true;
        };
        block.chunks_exact(4).zip(bits).all(|(w, b)| {
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            w & b == b
        })
    }

    /// Starts reading the block of this slot hash (see [`crate::map::prefetch`]).
    #[inline]
    pub(crate) fn touch(&self, slot_hash: u32) {
        if let Some((block, _)) = self.block(slot_hash) {
            crate::map::prefetch(&block[0]);
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
                (x >> 36) as u32
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
