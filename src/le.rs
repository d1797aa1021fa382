//! Little-endian fields at fixed offsets: what the record and control page headers are made
//! of. `put(h, OFF_X, v.to_le_bytes())` / `u64::from_le_bytes(get(h, OFF_X))` say each
//! field's offset once and take its width from its type, so an offset table cannot be read
//! or written with a width it was not laid out for.
//!
//! Both panic if the field is not inside the buffer: callers check a header's length once,
//! before its fields are read.

/// The `N` bytes at `off`.
pub(crate) fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Writes `bytes` at `off`.
pub(crate) fn put<const N: usize>(b: &mut [u8], off: usize, bytes: [u8; N]) {
    b[off..off + N].copy_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_offsets() {
        let mut h = [0u8; 16];
        put(&mut h, 2, 0x0102_0304u32.to_le_bytes());
        put(&mut h, 8, u64::MAX.to_le_bytes());
        assert_eq!(h[..8], [0, 0, 4, 3, 2, 1, 0, 0]);
        assert_eq!(u32::from_le_bytes(get(&h, 2)), 0x0102_0304);
        assert_eq!(u64::from_le_bytes(get(&h, 8)), u64::MAX);
        assert_eq!(u16::from_le_bytes(get(&h, 2)), 0x0304);
    }
}
