//! Text that compression cannot shrink much, for tests and benches whose keys must take their
//! length on disk (keys of 512 bytes or more are stored compressed). Included by
//! `tests/common` and by `benches/loops.rs`.

/// `len` bytes of letters and spaces that look random (a splitmix64 stream from `seed`).
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            b"abcdefghijklmnopqrstuvwxyz     "[((z ^ (z >> 31)) % 31) as usize] as char
        })
        .collect()
}
