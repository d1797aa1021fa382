//! Segment records, as bytes. `docs/format.md` is the specification; this module knows nothing
//! of files, maps or types beyond the value kind byte.

use std::borrow::Cow;

use crate::hash::xxh3_64;
use crate::keys;
use crate::le;

/// Size of the fixed record header.
pub(crate) const HEADER_LEN: usize = 32;
/// Records start at multiples of this, so `u32` token values are aligned in the map.
pub(crate) const ALIGN: usize = 4;
/// Records that hold their prefix's text are padded to a multiple of this (as all records
/// were before format 6).
const TEXT_ALIGN: usize = 8;
/// The largest record accepted (header, value, prefix and key together).
pub(crate) const MAX_RECORD_LEN: usize = 1 << 30;
/// A record holding its prefix's text.
const MAGIC: u16 = 0x4b54; // "TK" little-endian
/// A record holding its prefix's number in the prefix table instead (at `OFF_PREFIX_LEN`).
const MAGIC_INTERNED: u16 = 0x4954; // "TI" little-endian

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

/// How a record names its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prefix<'a> {
    /// By its text, stored in the record.
    Text(&'a str),
    /// By its number in the prefix table (`prefixes.tkp`).
    Interned(u8),
}

impl Prefix<'_> {
    /// Bytes of the prefix stored in the record.
    fn stored_len(self) -> usize {
        match self {
            Prefix::Text(t) => t.len(),
            Prefix::Interned(_) => 0,
        }
    }
}

/// The names of interned prefixes, by number: what a record that names its prefix by number
/// is decoded with (the prefix table, `prefixes.rs`, is the one implementation).
pub(crate) trait PrefixNames {
    /// The prefix of number `id`, if there is one.
    fn name(&self, id: u8) -> Option<&str>;
}

impl<T: PrefixNames + ?Sized> PrefixNames for std::sync::Arc<T> {
    #[inline]
    fn name(&self, id: u8) -> Option<&str> {
        (**self).name(id)
    }
}

/// A record decoded in place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordRef<'a> {
    pub kind: Kind,
    pub key_hash: u64,
    pub timestamp: f64,
    pub value: &'a [u8],
    /// The prefix's text; empty (no valid prefix is) for a number the table does not hold.
    pub prefix: &'a [u8],
    /// Its number, for a record of an interned prefix.
    pub prefix_id: Option<u8>,
    /// What keys are compared by: the key's bytes, or a packed key's identity (see
    /// [`crate::keys::PACK_MIN`]).
    pub key: &'a [u8],
    /// The key as stored: `key`, or a packed key's identity and compressed bytes (what a
    /// record written again from this one stores).
    pub stored_key: &'a [u8],
    /// Bytes the record takes in its segment, padding included.
    pub len: usize,
}

impl RecordRef<'_> {
    /// The key's text (a packed key decompressed); `None` if a packed key is damaged.
    pub(crate) fn key_text(&self) -> Option<Cow<'_, [u8]>> {
        keys::unpack(self.key, &self.stored_key[self.key.len()..])
    }

    /// The prefix as the record names it (to write it again the same way).
    pub(crate) fn prefix_field(&self) -> Prefix<'_> {
        match self.prefix_id {
            Some(id) => Prefix::Interned(id),
            None => Prefix::Text(std::str::from_utf8(self.prefix).unwrap_or_default()),
        }
    }
}

/// Total on-disk length of a record with these parts.
pub(crate) fn encoded_len(value: usize, prefix: Prefix<'_>, key: usize) -> usize {
    padded(HEADER_LEN + value + prefix.stored_len() + key, prefix)
}

fn padded(len: usize, prefix: Prefix<'_>) -> usize {
    match prefix {
        Prefix::Text(_) => len.next_multiple_of(TEXT_ALIGN),
        Prefix::Interned(_) => len.next_multiple_of(ALIGN),
    }
}

/// Appends one record to `out` (which must start 4-aligned relative to the segment).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    key_hash: u64,
    timestamp: f64,
    value: &[u8],
    prefix: Prefix<'_>,
    key: &[u8],
) {
    encode_parts(out, kind, key_hash, timestamp, value, prefix, &[key]);
}

/// [`encode`] of a key given in parts, written one after the other.
pub(crate) fn encode_parts(
    out: &mut Vec<u8>,
    kind: Kind,
    key_hash: u64,
    timestamp: f64,
    value: &[u8],
    prefix: Prefix<'_>,
    key: &[&[u8]],
) {
    let key_len: usize = key.iter().map(|p| p.len()).sum();
    let start = out.len();
    let total = encoded_len(value.len(), prefix, key_len);
    out.reserve(total);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let h = &mut out[start..start + HEADER_LEN];
    le::put(h, OFF_KEY_LEN, (key_len as u32).to_le_bytes());
    le::put(h, OFF_KEY_HASH, key_hash.to_le_bytes());
    le::put(h, OFF_TIMESTAMP, timestamp.to_le_bytes());
    le::put(h, OFF_VALUE_LEN, (value.len() as u32).to_le_bytes());
    let (prefix_byte, magic, text) = match prefix {
        Prefix::Text(t) => (t.len() as u8, MAGIC, t.as_bytes()),
        Prefix::Interned(id) => (id, MAGIC_INTERNED, &[][..]),
    };
    h[OFF_PREFIX_LEN] = prefix_byte;
    h[OFF_KIND] = kind as u8;
    le::put(h, OFF_MAGIC, magic.to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(text);
    let summed_end = out.len();
    for part in key {
        out.extend_from_slice(part);
    }
    out.resize(start + total, 0);
    let sum = xxh3_64(&out[start + 4..summed_end]) as u32;
    le::put(&mut out[start..], OFF_SUM, sum.to_le_bytes());
}

/// The lengths a record header gives.
struct Extent {
    interned: bool,
    key_len: usize,
    value_len: usize,
    prefix_len: usize,
    /// Of the whole record, padding included.
    len: usize,
}

/// Reads a header's magic and lengths (nothing else is checked).
fn extent(h: &[u8]) -> Result<Extent, &'static str> {
    let interned = match u16::from_le_bytes(le::get(h, OFF_MAGIC)) {
        MAGIC => false,
        MAGIC_INTERNED => true,
        _ => return Err("bad record magic"),
    };
    let key_len = u32::from_le_bytes(le::get(h, OFF_KEY_LEN)) as usize;
    let value_len = u32::from_le_bytes(le::get(h, OFF_VALUE_LEN)) as usize;
    let (prefix_len, form) = if interned {
        (0, Prefix::Interned(h[OFF_PREFIX_LEN]))
    } else {
        (h[OFF_PREFIX_LEN] as usize, Prefix::Text(""))
    };
    if key_len + value_len + prefix_len > MAX_RECORD_LEN {
        return Err("record length over the limit");
    }
    Ok(Extent {
        interned,
        key_len,
        value_len,
        prefix_len,
        len: padded(HEADER_LEN + value_len + prefix_len + key_len, form),
    })
}

/// The number of records in `buf[start..end]`, walking their lengths only: for records this
/// process has already checked (their bytes never change once published). Stops early at
/// anything that is not a record header.
pub(crate) fn count_checked(buf: &[u8], start: usize, end: usize) -> u64 {
    let mut off = start;
    let mut records = 0;
    while off < end {
        let Some(h) = buf.get(off..).and_then(|b| b.get(..HEADER_LEN)) else {
            break;
        };
        let Ok(e) = extent(h) else { break };
        off += e.len;
        records += 1;
    }
    records
}

/// Decodes and checks the record at `off` of `buf`: bounds, magic, kind, and the checksum over
/// header, value and prefix. Key bytes are not summed: a reader compares them with the key it
/// asked for, and scans check them against `key_hash` when they need to. A prefix number that
/// `prefixes` does not hold is no error here (the record's extent is sound, so a scan goes on
/// past it): its `prefix` is empty, which no lookup asks for.
pub(crate) fn decode<'a, P: PrefixNames + ?Sized>(
    buf: &'a [u8],
    off: usize,
    prefixes: &'a P,
) -> Result<RecordRef<'a>, &'static str> {
    if !off.is_multiple_of(ALIGN) {
        return Err("misaligned record offset");
    }
    let Some(h) = buf.get(off..).and_then(|b| b.get(..HEADER_LEN)) else {
        return Err("record header past end of segment");
    };
    let Extent {
        interned,
        key_len,
        value_len,
        prefix_len,
        len,
    } = extent(h)?;
    let kind = Kind::from_byte(h[OFF_KIND]).ok_or("unknown value kind")?;
    let Some(rec) = buf.get(off..off + len) else {
        return Err("record past end of segment");
    };
    let value_end = HEADER_LEN + value_len;
    let prefix_end = value_end + prefix_len;
    let sum = xxh3_64(&rec[4..prefix_end]) as u32;
    if sum != u32::from_le_bytes(le::get(h, OFF_SUM)) {
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
    // The key is not under the checksum: a key field that starts as a packed key but is too
    // short for one is damage, kept whole as the key (it equals no asked key, and the scan
    // goes on past it as it does past any other damaged key).
    let stored_key = &rec[prefix_end..prefix_end + key_len];
    let key = match stored_key.get(..keys::KEY_ID_LEN) {
        Some(id) if id[0] == keys::PACKED && stored_key.len() > keys::KEY_ID_LEN => id,
        _ => stored_key,
    };
    let (prefix, prefix_id) = if interned {
        let id = h[OFF_PREFIX_LEN];
        (prefixes.name(id).unwrap_or_default().as_bytes(), Some(id))
    } else {
        (&rec[value_end..prefix_end], None)
    };
    Ok(RecordRef {
        kind,
        key_hash: u64::from_le_bytes(le::get(h, OFF_KEY_HASH)),
        timestamp: f64::from_le_bytes(le::get(h, OFF_TIMESTAMP)),
        value: &rec[HEADER_LEN..value_end],
        prefix,
        prefix_id,
        key,
        stored_key,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Dir;
    use crate::prefixes::Prefixes;

    /// A key field that begins like a packed key but is too short for one (damage: keys are
    /// not under the checksum) decodes as a key that nothing asks for, and the scan goes on.
    #[test]
    fn a_damaged_key_that_looks_packed_is_a_key_of_its_own() {
        use crate::keys::{Key, KeyBytes};
        let damaged = [keys::PACKED, b'e', b'y'];
        let mut buf = Vec::new();
        for key in [&damaged[..], b"next"] {
            encode(&mut buf, Kind::Int, 7, 1.5, &[0; 8], Prefix::Text("t"), key);
        }
        struct NoNames;
        impl PrefixNames for NoNames {
            fn name(&self, _: u8) -> Option<&str> {
                None
            }
        }
        let table = NoNames;
        let r = decode(&buf, 0, &table).unwrap();
        assert_eq!(r.key, &damaged[..]);
        assert!(r.key_text().is_none());
        assert!(!Key::whole(b"key").eq_bytes(r.key));
        assert!(!b"\xffey"[..].eq_bytes(b"key"));
        assert_eq!(decode(&buf, r.len, &table).unwrap().key, b"next");
    }

    #[test]
    fn round_trip_and_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir {
            path: tmp.path().to_path_buf(),
            mode: 0o644,
        };
        let table = Prefixes::open(&dir).unwrap();
        let id = table.intern("test", || Ok(false)).unwrap().unwrap();
        let forms = [(Prefix::Text("test"), 4, 8), (Prefix::Interned(id), 0, 4)];
        for (prefix, stored, align) in forms {
            let mut buf = Vec::new();
            let value = 42i64.to_le_bytes();
            encode(&mut buf, Kind::Int, 7, 1.5, &value, prefix, b"key");
            assert_eq!(buf.len(), encoded_len(8, prefix, 3));
            assert_eq!(
                buf.len(),
                (32 + 8 + stored + 3_usize).next_multiple_of(align)
            );
            let r = decode(&buf, 0, &table).unwrap();
            assert_eq!((r.kind, r.key_hash, r.timestamp), (Kind::Int, 7, 1.5));
            assert_eq!((r.prefix, r.key), (&b"test"[..], &b"key"[..]));
            assert_eq!(r.prefix_field(), prefix);
            for i in 0..HEADER_LEN + 8 + stored {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                assert!(
                    decode(&bad, 0, &table).is_err(),
                    "flip at {i} went unnoticed"
                );
                // The flip that turns one magic into the other.
                bad[i] ^= 0x12;
                assert!(
                    decode(&bad, 0, &table).is_err(),
                    "flip at {i} went unnoticed"
                );
            }
            assert!(decode(&buf[..buf.len() - 8], 0, &table).is_err());
        }
        // Counting by lengths: both forms, a stop at the given end and at bytes that are no
        // record.
        let mut run = Vec::new();
        for prefix in [
            Prefix::Text("test"),
            Prefix::Interned(id),
            Prefix::Text("t"),
        ] {
            encode(&mut run, Kind::Json, 1, 0.0, b"[1,2,3]", prefix, b"k");
        }
        let first = encoded_len(7, Prefix::Text("test"), 1);
        assert_eq!(count_checked(&run, 0, run.len()), 3);
        assert_eq!(count_checked(&run, first, run.len()), 2);
        assert_eq!(count_checked(&run, 0, first), 1);
        run.extend_from_slice(&[0; 64]);
        assert_eq!(count_checked(&run, 0, run.len()), 3);
        // A number the table does not hold: the record is sound, its prefix unknown.
        let mut buf = Vec::new();
        encode(
            &mut buf,
            Kind::Int,
            7,
            1.5,
            &[0; 8],
            Prefix::Interned(9),
            b"key",
        );
        let r = decode(&buf, 0, &table).unwrap();
        assert_eq!(
            (r.prefix, r.prefix_id, r.len),
            (&b""[..], Some(9), buf.len())
        );
    }
}
