//! Borrowed views of stored values and entries.

use std::borrow::Cow;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::keys::logical_name;
use crate::map::{ReadMap, as_u32s};
use crate::pyjson;
use crate::record::{Kind, RecordRef};
use crate::value::{Stored, legacy_value};

/// A value found by [`Cache::get_ref`](crate::Cache::get_ref): borrowed from the shared map when
/// it came from disk (the map stays alive as long as this does), or the RAM tier's copy.
///
/// ```
/// # let tmp = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(tmp.path())?;
/// cache.set_tokens("tokens", "tokenizer:cl100k_base:hello world", &[15339, 1917])?;
/// cache.set("test", "json", &serde_json::json!({"a": [1, "two"]}))?;
/// let ids = cache.get_tokens("tokens", "tokenizer:cl100k_base:hello world").unwrap();
/// assert_eq!(ids.as_tokens(), Some(&[15339u32, 1917][..])); // no copy, no decoding
/// let json = cache.get_ref("test", "json").unwrap();
/// assert_eq!(json.as_json_str(), Some(r#"{"a":[1,"two"]}"#));
/// assert_eq!(json.as_i64(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct ValueRef {
    inner: Inner,
    timestamp: f64,
}

/// What kind of value a [`ValueRef`] holds, as it is stored.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &serde_json::json!(null))?;
/// assert_eq!(cache.get_ref("test", "k").unwrap().kind(), tokcache::ValueKind::Json);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    /// A 64-bit integer ([`ValueRef::as_i64`]).
    Int,
    /// A float ([`ValueRef::as_f64`]).
    Float,
    /// Token ids stored with `set_tokens` ([`ValueRef::as_tokens`]).
    Tokens,
    /// Any other JSON value: `null`, booleans, strings, arrays, objects, integers beyond 64
    /// bits ([`ValueRef::as_json_str`]).
    Json,
}

#[derive(Clone, Debug)]
enum Inner {
    Mapped {
        map: Arc<ReadMap>,
        start: usize,
        end: usize,
        kind: Kind,
    },
    Owned(Stored),
}

impl ValueRef {
    pub(crate) fn mapped(map: &Arc<ReadMap>, rec: &RecordRef<'_>) -> Self {
        let start = rec.value.as_ptr() as usize - map.bytes().as_ptr() as usize;
        Self {
            inner: Inner::Mapped {
                map: Arc::clone(map),
                start,
                end: start + rec.value.len(),
                kind: rec.kind,
            },
            timestamp: rec.timestamp,
        }
    }

    pub(crate) fn owned(value: Stored, timestamp: f64) -> Self {
        Self {
            inner: Inner::Owned(value),
            timestamp,
        }
    }

    /// When the value was stored, in seconds since the Unix epoch.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// let v = cache.get_ref("test", "k").unwrap();
    /// assert!((std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() - v.timestamp()).abs() < 60.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timestamp(&self) -> f64 {
        self.timestamp
    }

    /// What kind of value this is, which says which of the `as_` accessors returns it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// use tokcache::ValueKind;
    /// cache.set("test", "n", &3)?;
    /// cache.set("test", "s", &"three")?;
    /// cache.set_tokens("test", "t", &[3])?;
    /// let kind = |k| cache.get_ref("test", k).map(|v| v.kind());
    /// assert_eq!((kind("n"), kind("s"), kind("t")), (Some(ValueKind::Int), Some(ValueKind::Json), Some(ValueKind::Tokens)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kind(&self) -> ValueKind {
        match &self.inner {
            Inner::Mapped { kind, .. } => match kind {
                Kind::Int => ValueKind::Int,
                Kind::Float => ValueKind::Float,
                Kind::Tokens => ValueKind::Tokens,
                // A tombstone is never handed out as a value.
                Kind::Json | Kind::Legacy | Kind::Tombstone => ValueKind::Json,
            },
            Inner::Owned(Stored::Int(_)) => ValueKind::Int,
            Inner::Owned(Stored::Float(_)) => ValueKind::Float,
            Inner::Owned(Stored::Tokens(_)) => ValueKind::Tokens,
            Inner::Owned(Stored::Json(_)) => ValueKind::Json,
        }
    }

    /// An integer value (a token count).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("token_count", "k", &42u64)?;
    /// assert_eq!(cache.get_ref("token_count", "k").unwrap().as_i64(), Some(42));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_i64(&self) -> Option<i64> {
        match &self.inner {
            Inner::Mapped {
                map,
                start,
                end,
                kind: Kind::Int,
            } => Some(i64::from_le_bytes(
                map.bytes()[*start..*end].try_into().ok()?,
            )),
            Inner::Owned(Stored::Int(i)) => Some(*i),
            _ => self.decode().ok(),
        }
    }

    /// A float value (integers convert).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "ratio", &0.25)?;
    /// cache.set("test", "n", &2)?;
    /// assert_eq!(cache.get_ref("test", "ratio").unwrap().as_f64(), Some(0.25));
    /// assert_eq!(cache.get_ref("test", "n").unwrap().as_f64(), Some(2.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_f64(&self) -> Option<f64> {
        match &self.inner {
            Inner::Mapped {
                map,
                start,
                end,
                kind: Kind::Float,
            } => Some(f64::from_le_bytes(
                map.bytes()[*start..*end].try_into().ok()?,
            )),
            Inner::Owned(Stored::Float(f)) => Some(*f),
            _ => self.as_i64().map(|i| i as f64),
        }
    }

    /// Token ids stored with `set_tokens`, borrowed.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_tokens("tokens", "k", &[9906, 1917])?;
    /// assert_eq!(cache.get_ref("tokens", "k").unwrap().as_tokens(), Some(&[9906, 1917][..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_tokens(&self) -> Option<&[u32]> {
        match &self.inner {
            Inner::Mapped {
                map,
                start,
                end,
                kind: Kind::Tokens,
            } => as_u32s(&map.bytes()[*start..*end]),
            Inner::Owned(Stored::Tokens(t)) => Some(t),
            _ => None,
        }
    }

    /// The JSON text of a value that is neither a number nor tokens, borrowed.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &vec!["a", "b"])?;
    /// assert_eq!(cache.get_ref("test", "k").unwrap().as_json_str(), Some(r#"["a","b"]"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_json_str(&self) -> Option<&str> {
        match &self.inner {
            Inner::Mapped {
                map,
                start,
                end,
                kind: Kind::Json,
            } => std::str::from_utf8(&map.bytes()[*start..*end]).ok(),
            Inner::Mapped {
                map,
                start,
                end,
                kind: Kind::Legacy,
            } => legacy_value(&map.bytes()[*start..*end]),
            Inner::Owned(Stored::Json(s)) => Some(s),
            _ => None,
        }
    }

    /// The value as compact JSON text (numbers and token lists written out).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_tokens("tokens", "k", &[1, 2])?;
    /// cache.set("test", "n", &7)?;
    /// assert_eq!(cache.get_ref("tokens", "k").unwrap().to_json_string().as_deref(), Some("[1,2]"));
    /// assert_eq!(cache.get_ref("test", "n").unwrap().to_json_string().as_deref(), Some("7"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json_string(&self) -> Option<String> {
        if let Some(s) = self.as_json_str() {
            return Some(s.to_string());
        }
        match self.to_stored().ok()? {
            Stored::Int(i) => Some(i.to_string()),
            Stored::Float(f) => serde_json::to_string(&f).ok(),
            Stored::Tokens(t) => serde_json::to_string(&*t).ok(),
            Stored::Json(s) => Some(s.to_string()),
        }
    }

    pub(crate) fn to_stored(&self) -> Result<Stored> {
        match &self.inner {
            Inner::Mapped {
                map,
                start,
                end,
                kind,
            } => Stored::decode_value(*kind, &map.bytes()[*start..*end]),
            Inner::Owned(v) => Ok(v.clone()),
        }
    }

    /// Deserializes the value.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// #[derive(serde::Deserialize)]
    /// struct Split { words: Vec<String> }
    /// cache.set("test", "k", &serde_json::json!({"words": ["a", "b"]}))?;
    /// let split: Split = cache.get_ref("test", "k").unwrap().decode()?;
    /// assert_eq!(split.words, ["a", "b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.to_stored()?.to_value()
    }
}

/// One entry on disk, as [`Cache::for_each_entry`](crate::Cache::for_each_entry) shows it.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &[1, 2])?;
/// let mut out = None;
/// cache.for_each_entry(|e| out = Some((e.prefix().to_string(), e.key().to_string(), e.is_expired())));
/// assert_eq!(out, Some(("test".into(), "k".into(), false)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Entry<'a> {
    rec: &'a RecordRef<'a>,
    prefix: &'a str,
    /// The key's text (a packed key decompressed).
    key: Cow<'a, str>,
    age: f64,
    expired: bool,
}

impl<'a> Entry<'a> {
    pub(crate) fn new(rec: &'a RecordRef<'a>, now: f64, ttl_secs: f64) -> Option<Self> {
        let prefix = std::str::from_utf8(rec.prefix).ok()?;
        let key = match rec.key_text()? {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
            Cow::Owned(v) => Cow::Owned(String::from_utf8(v).ok()?),
        };
        let age = now - rec.timestamp;
        Some(Self {
            rec,
            prefix,
            key,
            age,
            expired: age > ttl_secs,
        })
    }

    /// The entry's prefix.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.prefix() == "test"));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefix(&self) -> &str {
        self.prefix
    }

    /// The entry's key.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.key() == "k"));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When the entry was stored, in seconds since the Unix epoch.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.timestamp() > 1.7e9));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timestamp(&self) -> f64 {
        self.rec.timestamp
    }

    /// Seconds since the entry was stored.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some((0.0..60.0).contains(&e.age_secs())));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn age_secs(&self) -> f64 {
        self.age
    }

    /// Whether the entry is older than the cache's TTL (a lookup would miss it).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(!e.is_expired()));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// Bytes of the stored value.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.value_len() == 5)); // "[1,2]"
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn value_len(&self) -> usize {
        self.rec.value.len()
    }

    /// `{prefix}_{md5hex(key)}`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.logical_name() == tokcache::logical_name("test", "k")));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn logical_name(&self) -> String {
        logical_name(self.prefix, &self.key)
    }

    /// Whether the entry came from an original-format file (exported as it was).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(!e.is_original())); // stored by tokcache, not read from an original file
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_original(&self) -> bool {
        self.rec.kind == Kind::Legacy
    }

    /// The value as the original would write it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.value_json().as_deref() == Some("[1,2]")));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn value_json(&self) -> Option<String> {
        let value = Stored::decode(self.rec.kind, self.rec.value)?;
        let mut out = String::new();
        pyjson::write_value(&mut out, &value)?;
        Some(out)
    }

    /// The entry's file content in the original format: byte for byte what the original wrote
    /// for entries that came from it, else the same JSON the original would have written.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2])?;
    /// let mut out = None;
    /// cache.for_each_entry(|e| out = Some(e.to_original_json().unwrap().starts_with(r#"{"key":"k","value":[1,2],"timestamp":"#)));
    /// assert!(out.unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_original_json(&self) -> Option<String> {
        if self.rec.kind == Kind::Legacy {
            return String::from_utf8(self.rec.value.to_vec()).ok();
        }
        let value = Stored::decode(self.rec.kind, self.rec.value)?;
        let mut out = String::with_capacity(self.key.len() + self.rec.value.len() + 64);
        pyjson::write_entry(&mut out, &self.key, &value, self.rec.timestamp, self.prefix)?;
        Some(out)
    }
}
