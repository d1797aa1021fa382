//! Prefixes, key hashing, logical names and the two real key formats.

use md5::{Digest, Md5};

use crate::error::{Error, Result};
use crate::hash::{xxh3_64, xxh3_64_with_seed};

/// The prefix of token-count entries in the original.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set(tokcache::TOKEN_COUNT, &tokcache::token_count_key("cl100k_base", "hi"), &1u64)?;
/// assert_eq!(cache.get_token_count("cl100k_base", "hi"), Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const TOKEN_COUNT: &str = "token_count";
/// The prefix of symbol-efficiency entries in the original.
///
/// ```
/// use tokcache::original::{SYMBOL_EFFICIENCY, symbol_test_key};
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set(SYMBOL_EFFICIENCY, &symbol_test_key("→", &["a → b"]), &0.5)?;
/// assert_eq!(cache.get::<f64>(SYMBOL_EFFICIENCY, "symbol_test:→:a → b"), Some(0.5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const SYMBOL_EFFICIENCY: &str = "symbol_efficiency";
/// The original's default prefix.
///
/// ```
/// assert_eq!(tokcache::DEFAULT_PREFIX, "token");
/// assert!(tokcache::validate_prefix(tokcache::DEFAULT_PREFIX).is_ok());
/// ```
pub const DEFAULT_PREFIX: &str = "token";
/// Longest prefix accepted.
///
/// ```
/// use tokcache::{MAX_PREFIX_LEN, validate_prefix};
/// assert!(validate_prefix(&"p".repeat(MAX_PREFIX_LEN)).is_ok());
/// assert!(validate_prefix(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
/// ```
pub const MAX_PREFIX_LEN: usize = 64;

/// The original's token-count key: `tokenizer:{tokenizer}:{text}`.
///
/// ```
/// assert_eq!(tokcache::token_count_key("cl100k_base", "hello"), "tokenizer:cl100k_base:hello");
/// ```
pub fn token_count_key(tokenizer: &str, text: &str) -> String {
    let mut key = String::with_capacity(11 + tokenizer.len() + text.len());
    key.push_str("tokenizer:");
    key.push_str(tokenizer);
    key.push(':');
    key.push_str(text);
    key
}

/// The original's symbol-efficiency key: `symbol_test:{symbol}:{contexts joined by "|"}`.
///
/// ```
/// let key = tokcache::original::symbol_test_key("→", &["a → b", "x → y"]);
/// assert_eq!(key, "symbol_test:→:a → b|x → y");
/// ```
pub fn symbol_test_key<S: AsRef<str>>(symbol: &str, contexts: &[S]) -> String {
    let mut key = format!("symbol_test:{symbol}:");
    for (i, c) in contexts.iter().enumerate() {
        if i > 0 {
            key.push('|');
        }
        key.push_str(c.as_ref());
    }
    key
}

/// `{prefix}_{md5hex(key)}`: the entry's name in the original format (its file is this + `.json`).
///
/// ```
/// let name = tokcache::logical_name("token_count", "tokenizer:cl100k_base:hello");
/// assert!(name.starts_with("token_count_") && name.len() == "token_count_".len() + 32);
/// assert_eq!(tokcache::logical_name("p", ""), "p_d41d8cd98f00b204e9800998ecf8427e"); // md5 of ""
/// ```
pub fn logical_name(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", md5_hex(key.as_bytes()))
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(Md5::digest(bytes).into())
}

fn hex(digest: [u8; 16]) -> String {
    let mut hex = String::with_capacity(32);
    for b in digest {
        hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    hex
}

/// The bytes a prefix may hold: `[A-Za-z0-9_.-]` (a table: this check runs on every lookup).
const PREFIX_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
        b += 1;
    }
    t
};

/// Checks a prefix: 1-64 of ASCII letters, digits, `_`, `-`, `.`, not starting with `.`.
///
/// ```
/// use tokcache::validate_prefix;
/// assert!(validate_prefix("token_count").is_ok());
/// assert!(validate_prefix("v1.2-beta").is_ok());
/// for bad in ["", ".hidden", "a/b", "naïve"] {
///     assert!(validate_prefix(bad).is_err(), "{bad}");
/// }
/// ```
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let reason = if prefix.is_empty() {
        "empty"
    } else if prefix.len() > MAX_PREFIX_LEN {
        "longer than 64 bytes"
    } else if prefix.starts_with('.') {
        "starts with '.'"
    } else if !prefix.bytes().all(|b| PREFIX_BYTE[usize::from(b)]) {
        "only ASCII letters, digits, '_', '-' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidPrefix {
        prefix: prefix.to_string(),
        reason,
    })
}

/// The 64-bit key hash used by every table: seeded xxh3 of the key, the seed mixed with the
/// prefix. The seed is random per cache directory, so outsiders cannot aim collisions at it.
#[inline]
pub(crate) fn key_hash(seed: u64, prefix: &str, key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, seed ^ xxh3_64(prefix.as_bytes()))
}

/// A key as a lookup or a write was given it: whole, or in parts that are hashed, compared
/// and written as if joined. A token-count key is `tokenizer:` + encoding + `:` + text: looked
/// up by encoding and text, a message is not copied into a new string first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key<'a> {
    parts: [&'a [u8]; 4],
    len: usize,
}

impl<'a> Key<'a> {
    pub(crate) fn whole(key: &'a [u8]) -> Self {
        Self {
            parts: [key, b"", b"", b""],
            len: key.len(),
        }
    }

    /// `tokenizer:{encoding}:{text}`, the original's token-count key ([`token_count_key`]).
    pub(crate) fn token_count(encoding: &'a str, text: &'a str) -> Self {
        let parts = [
            b"tokenizer:".as_slice(),
            encoding.as_bytes(),
            b":",
            text.as_bytes(),
        ];
        Self {
            parts,
            len: parts.iter().map(|p| p.len()).sum(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The key in one slice, if it was given whole.
    fn as_whole(&self) -> Option<&'a [u8]> {
        (self.len == self.parts[0].len()).then_some(self.parts[0])
    }

    /// Its parts, in order (one for a key given whole).
    #[inline]
    pub(crate) fn parts(&self) -> &[&'a [u8]] {
        if self.as_whole().is_some() {
            &self.parts[..1]
        } else {
            &self.parts
        }
    }

    /// `{prefix}_{md5hex(key)}` ([`logical_name`]) of this key, hashed in parts.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn logical_name(&self, prefix: &str) -> String {
        let mut md5 = Md5::new();
        for p in self.parts() {
            md5.update(p);
        }
        format!("{prefix}_{}", hex(md5.finalize().into()))
    }

    /// The key's bytes, joined.
    pub(crate) fn to_vec(self) -> Vec<u8> {
        self.parts.concat()
    }

    /// The 64-bit key hash of this key under `prefix` ([`key_hash`] of the joined bytes).
    #[inline]
    pub(crate) fn hash(&self, seed: u64, prefix: &str) -> u64 {
        if let Some(whole) = self.as_whole() {
            return key_hash(seed, prefix, whole);
        }
        // A short key is joined on the stack and hashed in one go: streaming xxh3 costs more
        // to set up than copying a few KB.
        const JOIN_BELOW: usize = 4096;
        if self.len <= JOIN_BELOW {
            let mut buf = [0u8; JOIN_BELOW];
            let mut at = 0;
            for p in self.parts {
                buf[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            return key_hash(seed, prefix, &buf[..at]);
        }
        let mut h = twox_hash::XxHash3_64::with_seed(seed ^ xxh3_64(prefix.as_bytes()));
        for p in self.parts {
            std::hash::Hasher::write(&mut h, p);
        }
        std::hash::Hasher::finish(&h)
    }
}

/// Keys of this many bytes or more are stored packed: compressed, behind an identity that
/// lookups compare instead of the text (docs/format.md, "Packed keys").
pub(crate) const PACK_MIN: usize = 512;
/// The first byte of a packed key, which no UTF-8 text begins with.
pub(crate) const PACKED: u8 = 0xff;
/// Bytes of a packed key's identity: [`PACKED`], the key's length (u32), its 128-bit check.
pub(crate) const KEY_ID_LEN: usize = 21;
/// The most an LZ4 block expands: a match token encodes at most 255 more bytes per byte.
const MAX_LZ4_RATIO: usize = 255;
/// The seed of the identity's check: a constant, so that the identity of a key is the same in
/// every directory and under every prefix (the key hash, which is seeded, sits beside it).
const CHECK_SEED: u64 = 0x746f_6b63_6163_6865; // "tokcache"

impl Key<'_> {
    /// The identity a packed record stores for this key: [`PACKED`], the length, and xxh3-128
    /// of the bytes (only meaningful for keys of [`PACK_MIN`] bytes or more).
    pub(crate) fn id(&self) -> [u8; KEY_ID_LEN] {
        let check = match self.as_whole() {
            Some(whole) => twox_hash::XxHash3_128::oneshot_with_seed(CHECK_SEED, whole),
            None => {
                let mut h = twox_hash::XxHash3_128::with_seed(CHECK_SEED);
                for p in self.parts() {
                    h.write(p);
                }
                h.finish_128()
            }
        };
        let mut id = [0u8; KEY_ID_LEN];
        id[0] = PACKED;
        id[1..5].copy_from_slice(&(self.len as u32).to_le_bytes());
        id[5..].copy_from_slice(&check.to_le_bytes());
        id
    }

    /// The key as a record stores it: `None` below [`PACK_MIN`] bytes (the bytes themselves),
    /// else its identity followed by an LZ4 block of the bytes.
    pub(crate) fn packed(&self) -> Option<Vec<u8>> {
        if self.len < PACK_MIN || u32::try_from(self.len).is_err() {
            return None;
        }
        let joined;
        let bytes = match self.as_whole() {
            Some(whole) => whole,
            None => {
                joined = self.to_vec();
                &joined[..]
            }
        };
        let mut out =
            Vec::with_capacity(KEY_ID_LEN + lz4_flex::block::get_maximum_output_size(bytes.len()));
        out.extend_from_slice(&self.id());
        out.resize(out.capacity(), 0);
        // Never fails with room for the worst case; if it did, the key would be stored as its
        // text, which compares with its packed records by identity all the same.
        let n = lz4_flex::block::compress_into(bytes, &mut out[KEY_ID_LEN..]).ok()?;
        out.truncate(KEY_ID_LEN + n);
        Some(out)
    }
}

/// The text of a stored key: `id` as it is, or (a packed key: `id` its identity, `block` the
/// rest) the bytes decompressed, `None` if they do not match the identity (damage).
pub(crate) fn unpack<'a>(id: &'a [u8], block: &[u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    if id.first() != Some(&PACKED) {
        return Some(std::borrow::Cow::Borrowed(id));
    }
    let len = u32::from_le_bytes(id.get(1..5)?.try_into().ok()?) as usize;
    // The length is not under the record's checksum: a damaged one must not size an
    // allocation. An LZ4 block grows at most 255 times when decompressed.
    if !(PACK_MIN..=block.len().saturating_mul(MAX_LZ4_RATIO)).contains(&len) {
        return None;
    }
    let mut text = vec![0u8; len];
    let n = lz4_flex::block::decompress_into(block, &mut text).ok()?;
    (n == len && Key::whole(&text).id()[..] == *id).then_some(std::borrow::Cow::Owned(text))
}

/// A key that stored key bytes can be compared with: given whole (`[u8]`) or in parts.
pub(crate) trait KeyBytes {
    /// Whether `stored` is this key, byte for byte.
    fn eq_bytes(&self, stored: &[u8]) -> bool;
}

impl KeyBytes for [u8] {
    /// `self` is a key's text, or the identity of a packed key (another record's); so is
    /// `stored`. A text and an identity are compared by the text's identity (a key is
    /// packed only from [`PACK_MIN`] bytes on, but directories written before keys were
    /// packed hold long keys as text).
    #[inline]
    fn eq_bytes(&self, stored: &[u8]) -> bool {
        match (
            self.first() == Some(&PACKED),
            stored.first() == Some(&PACKED),
        ) {
            (false, true) => Key::whole(self).eq_bytes(stored),
            (true, false) => Key::whole(stored).eq_bytes(self),
            _ => self == stored,
        }
    }
}

impl KeyBytes for Key<'_> {
    /// A packed key (`stored` is its identity) is this key when the identities are equal.
    #[inline]
    fn eq_bytes(&self, stored: &[u8]) -> bool {
        if stored.first() == Some(&PACKED) {
            return self.len >= PACK_MIN && stored == self.id();
        }
        if let Some(whole) = self.as_whole() {
            return whole == stored;
        }
        if stored.len() != self.len {
            return false;
        }
        let mut rest = stored;
        for p in self.parts {
            let (head, tail) = rest.split_at(p.len());
            if head != p {
                return false;
            }
            rest = tail;
        }
        true
    }
}

/// A fresh random 64-bit seed (std's per-process random keys, the time and the pid).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// A `Hasher` for maps whose keys already are [`key_hash`] values: it passes them through.
#[derive(Clone, Copy, Default)]
pub(crate) struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by key hashes.
pub(crate) type HashKeyed<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<PassThrough>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys from [`PACK_MIN`] bytes on are packed: the identity compares as the key does
    /// (given whole, in parts, or as another record's identity), the text comes back whole,
    /// and a change of any byte, or of the length, is another key.
    #[test]
    fn packed_keys_compare_by_identity_and_unpack_to_their_text() {
        let text: Vec<u8> = (0..9000u32)
            .map(|i| {
                b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize]
                    ^ ((i / 700) as u8 % 2)
            })
            .collect();
        for len in [PACK_MIN - 1, PACK_MIN, PACK_MIN + 1, 2048, 9000] {
            let key = &text[..len];
            let whole = Key::whole(key);
            let Some(stored) = whole.packed() else {
                assert!(len < PACK_MIN);
                assert!(whole.eq_bytes(key));
                continue;
            };
            assert!(len >= PACK_MIN);
            assert!(
                stored.len() < len / 2,
                "{len} bytes packed to {}",
                stored.len()
            );
            let (id, block) = stored.split_at(KEY_ID_LEN);
            assert_eq!(unpack(id, block).as_deref(), Some(key));
            assert!(whole.eq_bytes(id));
            assert!(key.eq_bytes(id));
            assert!(id.eq_bytes(id));
            assert!(id.eq_bytes(key)); // a record of the key stored as text
            let (a, b) = key.split_at(len / 3);
            let parts = Key {
                parts: [a, b"", b, b""],
                len,
            };
            assert!(parts.eq_bytes(id));
            assert_eq!(parts.packed().as_deref(), Some(&stored[..]));
            let mut other = key.to_vec();
            other[len / 2] ^= 1;
            assert!(!Key::whole(&other).eq_bytes(id));
            assert!(!other[..].eq_bytes(id));
            assert!(!Key::whole(&key[..len - 1]).eq_bytes(id));
            // The most compressible key still unpacks (LZ4's expansion bound holds).
            let same = vec![b'a'; len * 40];
            let packed = Key::whole(&same).packed().unwrap();
            let (same_id, same_block) = packed.split_at(KEY_ID_LEN);
            assert_eq!(unpack(same_id, same_block).as_deref(), Some(&same[..]));
            // A damaged length is refused before it sizes anything.
            let mut huge = id.to_vec();
            huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(unpack(&huge, block).is_none());
            // A damaged block never unpacks to a wrong text.
            for at in [0, block.len() / 2, block.len() - 1] {
                let mut damaged = block.to_vec();
                damaged[at] ^= 0x55;
                if let Some(t) = unpack(id, &damaged) {
                    assert_eq!(&t[..], key);
                }
            }
        }
    }

    /// A key in parts hashes and compares as the joined key, at every length around xxh3's
    /// internal boundaries, and differs from it in any byte.
    #[test]
    fn keys_in_parts_are_the_joined_key() {
        for len in (0..300).chain([1023, 1024, 1025, 4096, 100_000]) {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            for enc in ["", "cl100k_base", "o200k"] {
                let joined = token_count_key(enc, &text);
                let key = Key::token_count(enc, &text);
                assert_eq!(key.len(), joined.len());
                assert_eq!(key.to_vec(), joined.as_bytes());
                for seed in [0, 0x1234_5678_9abc_def0] {
                    assert_eq!(
                        key.hash(seed, "token_count"),
                        key_hash(seed, "token_count", joined.as_bytes()),
                        "{len} bytes, encoding {enc:?}"
                    );
                }
                assert!(key.eq_bytes(joined.as_bytes()));
                assert!(Key::whole(joined.as_bytes()).eq_bytes(joined.as_bytes()));
                let mut other = joined.clone().into_bytes();
                if let Some(last) = other.last_mut() {
                    *last ^= 1;
                    assert!(!key.eq_bytes(&other));
                }
                other.push(b'x');
                assert!(!key.eq_bytes(&other));
                assert!(!key.eq_bytes(&joined.as_bytes()[..joined.len() - 1]));
            }
        }
    }

    #[test]
    fn logical_name_matches_python_hashlib() {
        // python3 -c 'import hashlib;print(hashlib.md5("hello".encode()).hexdigest())'
        assert_eq!(
            logical_name("test", "hello"),
            "test_5d41402abc4b2a76b9719d911017c592"
        );
    }

    #[test]
    fn prefixes() {
        for ok in ["token", "token_count", "a.b-c_9", &"x".repeat(64)] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "/abs",
            ".hidden",
            "a b",
            "a\0b",
            &"x".repeat(65),
            "é",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_formats() {
        assert_eq!(
            token_count_key("cl100k_base", "hi"),
            "tokenizer:cl100k_base:hi"
        );
        assert_eq!(symbol_test_key("§", &["a", "b"]), "symbol_test:§:a|b");
        assert_ne!(key_hash(1, "a", b"k"), key_hash(1, "b", b"k"));
    }
}
