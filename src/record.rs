//! Segment records, as bytes. `docs/format.md` is the specification; this module knows nothing
//! of files, maps or types beyond the value kind byte.

use crate::hash::xxh3_64;

/// Size of the fixed record header.
pub(crate) const HEADER_LEN: usize = 32;
/// Records start at multiples of this, so `u32` token values and `f64`s are aligned in the map.
pub(crate) const ALIGN: usize = 8;
/// The largest record accepted (header, value, prefix and key together).
pub(crate) const MAX_RECORD_LEN: usize = 1 << 30;
const MAGIC: u16 = 0x4b54; // "TK" little-endian

const OFF_SUM: usize = 0;
const OFF_KEY_LEN: usize = 4;
const OFF_KEY_HASH: usize = 8;
const OFF_TIMESTAMP: usize = 16;
const OFF_VALUE_LEN: usize = 24;
const OFF_PREFIX_LEN: usize = 28;
const OFF_KIND: usize = 29;
const OFF_MAGIC: usize = 30;

/// What a record's value bytes hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A removal; no value.
    Tombstone = 0,
    /// An `i64`, 8 bytes little-endian.
    Int = 1,
    /// An `f64`, 8 bytes little-endian.
    Float = 2,
    /// Token ids, `u32` little-endian each.
    Tokens = 3,
    /// Compact JSON text of the value (UTF-8).
    Json = 4,
    /// A whole original-format entry object (`{"key":..,"value":..,..}`), kept byte for byte.
    Legacy = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Kind::Tombstone,
            1 => Kind::Int,
            2 => Kind::Float,
            3 => Kind::Tokens,
            4 => Kind::Json,
            5 => Kind::Legacy,
            _ => return None,
        })
    }
}

/// A record decoded in place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordRef<'a> {
    pub kind: Kind,
    pub key_hash: u64,
    pub timestamp: f64,
    pub value: &'a [u8],
    pub prefix: &'a [u8],
    pub key: &'a [u8],
    /// Bytes the record takes in its segment, padding included.
    pub len: usize,
}

/// Total on-disk length of a record with these parts.
pub(crate) fn encoded_len(value: usize, prefix: usize, key: usize) -> usize {
    (HEADER_LEN + value + prefix + key).next_multiple_of(ALIGN)
}

/// Appends one record to `out` (which must start 8-aligned relative to the segment).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    key_hash: u64,
    timestamp: f64,
    value: &[u8],
    prefix: &str,
    key: &[u8],
) {
    let start = out.len();
    let total = encoded_len(value.len(), prefix.len(), key.len());
    out.reserve(total);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let h = &mut out[start..start + HEADER_LEN];
    h[OFF_KEY_LEN..OFF_KEY_LEN + 4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    h[OFF_KEY_HASH..OFF_KEY_HASH + 8].copy_from_slice(&key_hash.to_le_bytes());
    h[OFF_TIMESTAMP..OFF_TIMESTAMP + 8].copy_from_slice(&timestamp.to_le_bytes());
    h[OFF_VALUE_LEN..OFF_VALUE_LEN + 4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    h[OFF_PREFIX_LEN] = prefix.len() as u8;
    h[OFF_KIND] = kind as u8;
    h[OFF_MAGIC..OFF_MAGIC + 2].copy_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(prefix.as_bytes());
    let summed_end = out.len();
    out.extend_from_slice(key);
    out.resize(start + total, 0);
    let sum = xxh3_64(&out[start + 4..summed_end]) as u32;
    out[start + OFF_SUM..start + OFF_SUM + 4].copy_from_slice(&sum.to_le_bytes());
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and checks the record at `off` of `buf`: bounds, magic, kind, and the checksum over
/// header, value and prefix. Key bytes are not summed: a reader compares them with the key it
/// asked for, and scans check them against `key_hash` when they need to.
pub(crate) fn decode(buf: &[u8], off: usize) -> Result<RecordRef<'_>, &'static str> {
    if !off.is_multiple_of(ALIGN) {
        return Err("misaligned record offset");
    }
    let Some(h) = buf.get(off..).and_then(|b| b.get(..HEADER_LEN)) else {
        return Err("record header past end of segment");
    };
    if u16::from_le_bytes([h[OFF_MAGIC], h[OFF_MAGIC + 1]]) != MAGIC {
        return Err("bad record magic");
    }
    let kind = Kind::from_byte(h[OFF_KIND]).ok_or("unknown value kind")?;
    let key_len = u32_at(h, OFF_KEY_LEN) as usize;
    let value_len = u32_at(h, OFF_VALUE_LEN) as usize;
    let prefix_len = h[OFF_PREFIX_LEN] as usize;
    if key_len + value_len + prefix_len > MAX_RECORD_LEN {
        return Err("record length over the limit");
    }
    let len = encoded_len(value_len, prefix_len, key_len);
    let Some(rec) = buf.get(off..off + len) else {
        return Err("record past end of segment");
    };
    let value_end = HEADER_LEN + value_len;
    let prefix_end = value_end + prefix_len;
    let sum = xxh3_64(&rec[4..prefix_end]) as u32;
    if sum != u32_at(h, OFF_SUM) {
        return Err("record checksum mismatch");
    }
    let ok_kind_len = match kind {
        Kind::Tombstone => value_len == 0,
        Kind::Int | Kind::Float => value_len == 8,
        Kind::Tokens => value_len.is_multiple_of(4),
        Kind::Json | Kind::Legacy => true,
    };
    if !ok_kind_len {
        return Err("value length does not fit its kind");
    }
    Ok(RecordRef {
        kind,
        key_hash: u64_at(h, OFF_KEY_HASH),
        timestamp: f64::from_le_bytes(u64_at(h, OFF_TIMESTAMP).to_le_bytes()),
        value: &rec[HEADER_LEN..value_end],
        prefix: &rec[value_end..prefix_end],
        key: &rec[prefix_end..prefix_end + key_len],
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            Kind::Int,
            7,
            1.5,
            &42i64.to_le_bytes(),
            "test",
            b"key",
        );
        assert_eq!(buf.len(), encoded_len(8, 4, 3));
        assert_eq!(buf.len() % ALIGN, 0);
        let r = decode(&buf, 0).unwrap();
        assert_eq!((r.kind, r.key_hash, r.timestamp), (Kind::Int, 7, 1.5));
        assert_eq!((r.prefix, r.key), (&b"test"[..], &b"key"[..]));
        for i in 0..HEADER_LEN + 12 {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, 0).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode(&buf[..buf.len() - 8], 0).is_err());
    }
}
