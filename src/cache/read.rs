//! Reads: every way of looking a key up (`get` and its typed, borrowed, batched and uncounted
//! forms), through this process's RAM tier and then the shared files.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{Cache, RAM_KEY_MAX};
use crate::cache::process::Process;
use crate::entry::ValueRef;
use crate::error::Result;
use crate::keys::{Key, TOKEN_COUNT, validate_prefix};
use crate::map::ReadMap;
use crate::pool;
use crate::record::{Kind, RecordRef};
use crate::store::{self, Lookup};
use crate::tally::{self, Found};
use crate::value::Stored;

/// A key a lookup asks for: of a valid prefix, with its hash; `count`: whether the lookup goes
/// into the hit and miss counters.
pub(super) struct Asked<'a> {
    /// This process's state, found once for the lookup.
    local: &'a Process,
    prefix: &'a str,
    key: Key<'a>,
    hash: u64,
    count: bool,
    lookup: Lookup,
}

impl<'a> Asked<'a> {
    /// A key of a batch ([`Cache::get_many`]), its hash computed already.
    fn batched(local: &'a Process, prefix: &'a str, key: &'a str, hash: u64, count: bool) -> Self {
        Self {
            local,
            prefix,
            key: Key::whole(key.as_bytes()),
            hash,
            count,
            lookup: Lookup::Batched,
        }
    }
}

/// Where a lookup found its value.
pub(super) enum Hit<'a> {
    Ram(Stored, f64),
    Disk(&'a Arc<ReadMap>, &'a RecordRef<'a>),
}

impl Cache {
    /// What a lookup of `key` asks for, once its prefix is checked.
    fn asked<'a>(&'a self, prefix: &'a str, key: Key<'a>, count: bool) -> Result<Asked<'a>> {
        validate_prefix(prefix)?;
        let local = self.local();
        Ok(Asked {
            local,
            prefix,
            key,
            hash: self.hash_in(local, prefix, &key),
            count,
            lookup: Lookup::Alone,
        })
    }

    /// Finds a live value of the asked key and hands it to `extract`.
    fn lookup<R>(&self, q: &Asked<'_>, extract: impl Fn(Hit<'_>) -> R) -> Option<R> {
        // While nothing changed since a view guard was last taken, the RAM tier is current and
        // is asked before taking one; otherwise after catching up (which invalidates entries).
        // Either way it is asked once. One read guard serves catching up and the disk tier.
        let unchanged = q.local.store.as_ref().is_none_or(|s| s.unchanged());
        if unchanged && let Some((value, ts)) = self.in_ram(q) {
            self.count(q, Found::RamHit);
            return Some(extract(Hit::Ram(value, ts)));
        }
        let reader = Self::reader_of(q.local);
        let found = self.lookup_in(reader.as_ref(), !unchanged, q, &extract);
        if found.is_some() {
            return found;
        }
        drop(reader); // keeping a value found in the shared tier writes it
        let (value, ts) = self.missed(q)?;
        Some(extract(Hit::Ram(value, ts)))
    }

    /// [`Cache::lookup`] in the local tiers through a reader already caught up (the RAM tier is
    /// then current as of it), asking the RAM tier first if `ask_ram`. A hit is counted, a
    /// miss is not: [`Cache::missed`] does it.
    fn lookup_in<R>(
        &self,
        reader: Option<&store::Reader<'_>>,
        ask_ram: bool,
        q: &Asked<'_>,
        extract: &impl Fn(Hit<'_>) -> R,
    ) -> Option<R> {
        if ask_ram && let Some((value, ts)) = self.in_ram(q) {
            self.count(q, Found::RamHit);
            return Some(extract(Hit::Ram(value, ts)));
        }
        let found = reader.and_then(|r| {
            r.get(q.hash, q.prefix, &q.key, q.lookup, |map, rec| {
                // The clock is read only for an entry found (a miss does not need it).
                let fresh = !self.expired(rec.timestamp, self.settings.clock.now_coarse());
                fresh.then(|| extract(Hit::Disk(map, rec)))
            })
        });
        let found = found.flatten();
        if found.is_some() {
            self.count(q, Found::DiskHit);
        }
        found
    }

    /// After a local miss: the shared tier's live entry of the key, if there is a shared tier
    /// and the lookup is counted (an uncounted one is the second look of a get-or-compute,
    /// after a first that asked it), now kept locally too; counted as a shared hit or a miss.
    /// Call it with no reader held (keeping the entry writes it).
    fn missed(&self, q: &Asked<'_>) -> Option<(Stored, f64)> {
        let tier = q.local.shared.as_ref().filter(|_| q.count);
        let found = tier.and_then(|t| {
            let e = t.get(q.prefix, &q.key)?;
            let value = Stored::decode(Kind::Legacy, &e.bytes)?;
            // Kept as the original's object it is, with its own timestamp.
            let kept = self.write(
                q.hash,
                q.prefix,
                &q.key,
                Kind::Legacy,
                &e.bytes,
                e.timestamp,
                || {
                    self.keep_in_ram(
                        q.local,
                        q.hash,
                        q.prefix,
                        &q.key,
                        value.clone(),
                        e.timestamp,
                    );
                },
            );
            if let Err(err) = kept {
                log::warn!("cannot keep an entry of the shared tier here: {err}");
            }
            Some((value, e.timestamp))
        });
        let what = if found.is_some() {
            Found::SharedHit
        } else {
            Found::Miss
        };
        self.count(q, what);
        found
    }

    /// The RAM tier's live value of the key (an expired one is dropped).
    fn in_ram(&self, q: &Asked<'_>) -> Option<(Stored, f64)> {
        let (value, ts) = q.local.ram.get(q.hash, q.prefix, &q.key)?;
        if self.expired(ts, self.settings.clock.now_coarse()) {
            q.local.ram.remove(q.hash);
            q.local.pool.add(pool::Counter::Expired);
            return None;
        }
        Some((value, ts))
    }

    fn count(&self, q: &Asked<'_>, found: Found) {
        // A hit keeps its entry through the next eviction (a miss has nothing to keep).
        if matches!(found, Found::RamHit | Found::DiskHit)
            && let Some(s) = &q.local.store
        {
            s.touch(q.hash);
        }
        if q.count {
            let stripe = tally::stripe();
            self.tally.add_in(stripe, found);
            let counter = match found {
                Found::RamHit => pool::Counter::RamHit,
                Found::DiskHit => pool::Counter::DiskHit,
                Found::Miss => pool::Counter::Miss,
                Found::SharedHit => pool::Counter::SharedHit,
            };
            q.local.pool.add_in(stripe, counter, 1);
        }
    }

    /// The value of `key`, or `None` on a miss, an expired entry, a bad prefix, or a stored
    /// value that does not decode into `T` ([`Cache::try_get`] tells these apart).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &vec!["a", "b"])?;
    /// assert_eq!(cache.get::<Vec<String>>("test", "k"), Some(vec!["a".into(), "b".into()]));
    /// assert_eq!(cache.get::<u64>("test", "k"), None); // another type: try_get says why
    /// assert!(cache.try_get::<u64>("test", "k").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<T: DeserializeOwned>(&self, prefix: &str, key: &str) -> Option<T> {
        self.try_get(prefix, key).unwrap_or_else(|e| {
            log::debug!("get {prefix}/{}: {e}", key.len());
            None
        })
    }

    /// Like [`Cache::get`], with the reason of a failure.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &"text")?;
    /// assert_eq!(cache.try_get::<String>("test", "k")?, Some("text".to_string()));
    /// assert_eq!(cache.try_get::<String>("test", "absent")?, None);
    /// assert!(matches!(cache.try_get::<u64>("test", "k"), Err(tokcache::Error::Decode(_))));
    /// assert!(matches!(cache.try_get::<u64>("bad/prefix", "k"), Err(tokcache::Error::InvalidPrefix { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get<T: DeserializeOwned>(&self, prefix: &str, key: &str) -> Result<Option<T>> {
        self.get_counted(prefix, Key::whole(key.as_bytes()), true)
    }

    pub(super) fn get_counted<T: DeserializeOwned>(
        &self,
        prefix: &str,
        key: Key<'_>,
        count: bool,
    ) -> Result<Option<T>> {
        let q = self.asked(prefix, key, count)?;
        self.lookup(&q, |hit| self.decode_hit(&q, hit)).transpose()
    }

    /// The values of many keys of one prefix, in their order: what [`Cache::get`] returns for
    /// each (a bad prefix: all `None`). A batch issues the memory reads of several lookups at
    /// once, so that their waits overlap: in a cache much larger than the CPU cache, where a
    /// lookup mostly waits for two reads of the shared map (the index slot, then the record),
    /// a key costs a fraction of a `get` (docs/performance.md).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "a", &1u64)?;
    /// cache.set("test", "c", &3u64)?;
    /// assert_eq!(cache.get_many::<u64>("test", &["a", "b", "c"]), [Some(1), None, Some(3)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_many<T: DeserializeOwned>(
        &self,
        prefix: &str,
        keys: &[impl AsRef<str>],
    ) -> Vec<Option<T>> {
        self.try_get_many(prefix, keys)
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|e| {
                    log::debug!("get_many {prefix}: {e}");
                    None
                })
            })
            .collect()
    }

    /// Like [`Cache::get_many`], with the reason of each failure: what [`Cache::try_get`]
    /// returns for each key (a bad prefix: that error for every key).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "n", &1u64)?;
    /// cache.set("test", "s", &"text")?;
    /// let found = cache.try_get_many::<u64>("test", &["n", "s", "absent"]);
    /// assert_eq!(found[0].as_ref().ok(), Some(&Some(1)));
    /// assert!(found[1].is_err()); // not a u64
    /// assert_eq!(found[2].as_ref().ok(), Some(&None));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get_many<T: DeserializeOwned>(
        &self,
        prefix: &str,
        keys: &[impl AsRef<str>],
    ) -> Vec<Result<Option<T>>> {
        self.many(prefix, keys, true, |q, hit| self.decode_hit(q, hit))
    }

    /// What [`Cache::read`] returns for each of many keys of one prefix, in their order, with
    /// the overlapped reads of [`Cache::get_many`].
    ///
    /// ```
    /// use tokcache::{Cache, ReadOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// cache.set_tokens("tokens", "a", &[1, 2])?;
    /// cache.set("tokens", "b", &7)?;
    /// let found = cache.read_many("tokens", &["a", "b", "c"], ReadOptions::default().borrowed());
    /// let [a, b, c] = <[_; 3]>::try_from(found).unwrap();
    /// assert_eq!(a?.unwrap().as_tokens(), Some(&[1, 2][..])); // borrowed from the map
    /// assert_eq!(b?.unwrap().as_i64(), Some(7));
    /// assert!(c?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_many(
        &self,
        prefix: &str,
        keys: &[impl AsRef<str>],
        options: ReadOptions,
    ) -> Vec<Result<Option<ValueRef>>> {
        self.many(prefix, keys, options.counted, |q, hit| {
            self.read_hit(q, hit, options)
        })
    }

    /// Looks up many keys of one prefix, handing each hit to `extract`.
    fn many<R>(
        &self,
        prefix: &str,
        keys: &[impl AsRef<str>],
        count: bool,
        extract: impl Fn(&Asked<'_>, Hit<'_>) -> Result<R>,
    ) -> Vec<Result<Option<R>>> {
        /// Keys whose reads are issued together: enough to keep the memory system busy,
        /// few enough that the lines read for the first are still cached when it is looked up.
        const BATCH: usize = 16;
        if validate_prefix(prefix).is_err() {
            return keys
                .iter()
                .map(|_| validate_prefix(prefix).map(|()| None))
                .collect();
        }
        let local = self.local();
        let mut out = Vec::with_capacity(keys.len());
        let mut hashes = [0u64; BATCH];
        let mut missed = Vec::new();
        for chunk in keys.chunks(BATCH) {
            let hashes = &mut hashes[..chunk.len()];
            for (h, key) in hashes.iter_mut().zip(chunk) {
                *h = self.hash_in(local, prefix, &Key::whole(key.as_ref().as_bytes()));
            }
            // One caught-up reader serves the whole chunk (a lookup would take its own).
            let reader = Self::reader_of(local);
            if let Some(r) = &reader {
                r.prefetch(hashes);
            }
            for (key, &hash) in chunk.iter().zip(hashes.iter()) {
                let q = Asked::batched(local, prefix, key.as_ref(), hash, count);
                let found = self.lookup_in(reader.as_ref(), true, &q, &|hit| extract(&q, hit));
                if found.is_none() {
                    missed.push((out.len(), hash));
                }
                out.push(found.transpose());
            }
            drop(reader); // keeping a value found in the shared tier writes it
            for (at, hash) in missed.drain(..) {
                let q = Asked::batched(local, prefix, keys[at].as_ref(), hash, count);
                if let Some((value, ts)) = self.missed(&q) {
                    out[at] = extract(&q, Hit::Ram(value, ts)).map(Some);
                }
            }
        }
        out
    }

    /// The value a lookup found, as `T`; one found on disk also goes into the RAM tier.
    fn decode_hit<T: DeserializeOwned>(&self, q: &Asked<'_>, hit: Hit<'_>) -> Result<T> {
        self.value_hit(q, hit)?.decode()
    }

    /// The value a lookup found, as a [`ValueRef`]: one found on disk goes into the RAM tier
    /// as [`Cache::get`] puts it there (and is then returned as that copy), unless its key is
    /// too long to be copied (then it stays borrowed from the map).
    fn value_hit(&self, q: &Asked<'_>, hit: Hit<'_>) -> Result<ValueRef> {
        match hit {
            Hit::Ram(v, ts) => Ok(ValueRef::owned(v, ts)),
            Hit::Disk(map, rec) if q.prefix.len() + q.key.len() > RAM_KEY_MAX => {
                Ok(ValueRef::mapped(map, rec))
            }
            Hit::Disk(_, rec) => {
                let stored = Stored::decode_value(rec.kind, rec.value)?;
                let evicted =
                    q.local
                        .ram
                        .insert(q.hash, q.prefix, &q.key, stored.clone(), rec.timestamp);
                q.local.count_ram_evictions(evicted);
                Ok(ValueRef::owned(stored, rec.timestamp))
            }
        }
    }

    /// The value of `key` of any kind, looked up as `options` say: a [`ValueRef`] to look at
    /// ([`ValueRef::kind`] says which accessor holds it), for callers that do not name a
    /// type (language bindings, tools). `Ok(None)` on a miss or an expired entry; an error for
    /// a bad prefix.
    ///
    /// ```
    /// use tokcache::{Cache, ReadOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// cache.set("test", "k", &[1, 2, 3])?;
    /// let v = cache.read("test", "k", ReadOptions::default())?.unwrap();
    /// assert_eq!(v.as_json_str(), Some("[1,2,3]"));
    /// // The second look of a get-or-compute, not counted again in the statistics:
    /// assert!(cache.read("test", "absent", ReadOptions::default().uncounted())?.is_none());
    /// assert!(cache.read("../bad", "k", ReadOptions::default()).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, prefix: &str, key: &str, options: ReadOptions) -> Result<Option<ValueRef>> {
        let q = self.asked(prefix, Key::whole(key.as_bytes()), options.counted)?;
        self.lookup(&q, |hit| self.read_hit(&q, hit, options))
            .transpose()
    }

    /// A hit as [`Cache::read`] returns it: borrowed from the map, or (`keep_in_ram`) the
    /// decoded copy the RAM tier keeps.
    fn read_hit(&self, q: &Asked<'_>, hit: Hit<'_>, options: ReadOptions) -> Result<ValueRef> {
        match hit {
            Hit::Disk(map, rec) if !options.keep_in_ram => Ok(ValueRef::mapped(map, rec)),
            hit => self.value_hit(q, hit),
        }
    }

    /// The token count of `text` under `encoding` ([`Cache::get_token_count`]) looked up as
    /// `options` say (`keep_in_ram` does not apply: a count is copied anyway), with the reason
    /// of a failure (a stored value that is not a count: [`crate::Error::Decode`]).
    ///
    /// ```
    /// use tokcache::{Cache, ReadOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// cache.set_token_count("cl100k_base", "hello", 1)?;
    /// assert_eq!(cache.read_token_count("cl100k_base", "hello", ReadOptions::default())?, Some(1));
    /// // A second look after waiting for another thread's count, not counted again:
    /// assert_eq!(cache.read_token_count("cl100k_base", "new", ReadOptions::default().uncounted())?, None);
    /// assert_eq!(cache.get_stats().misses, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_token_count(
        &self,
        encoding: &str,
        text: &str,
        options: ReadOptions,
    ) -> Result<Option<u64>> {
        self.get_counted(
            TOKEN_COUNT,
            Key::token_count(encoding, text),
            options.counted,
        )
    }

    /// The value without copying it out of the shared map where it can: token ids as
    /// `&[u32]`, JSON as `&str`, numbers as they are. Counts as a hit or miss like `get`.
    /// `None` on a miss, an expired entry or a bad prefix ([`Cache::read`] with
    /// [`ReadOptions::borrowed`] tells these apart).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// tokcache::Cache::open(dir.path())?.set("test", "k", &serde_json::json!({"a": 1}))?;
    /// let cache = tokcache::Cache::open(dir.path())?; // another process
    /// let v = cache.get_ref("test", "k").unwrap(); // borrowed from the shared map
    /// assert_eq!(v.as_json_str(), Some(r#"{"a":1}"#));
    /// assert_eq!(cache.get_stats().ram_entries, 0); // not copied into RAM
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_ref(&self, prefix: &str, key: &str) -> Option<ValueRef> {
        self.read(prefix, key, ReadOptions::default().borrowed())
            .unwrap_or_else(|e| {
                log::debug!("get_ref {prefix}/{}: {e}", key.len());
                None
            })
    }

    /// Token ids stored with [`Cache::set_tokens`], borrowed from the shared map (`None` for
    /// a value of another kind too).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_tokens("tokens", "tokenizer:cl100k_base:hello world", &[15339, 1917])?;
    /// let ids = cache.get_tokens("tokens", "tokenizer:cl100k_base:hello world").unwrap();
    /// assert_eq!(ids.as_tokens(), Some(&[15339, 1917][..]));
    /// cache.set("tokens", "a count", &2)?;
    /// assert!(cache.get_tokens("tokens", "a count").is_none()); // not token ids
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_tokens(&self, prefix: &str, key: &str) -> Option<ValueRef> {
        self.get_ref(prefix, key)
            .filter(|v| v.as_tokens().is_some())
    }

    /// The token count cached for `text` under `encoding`: the entry of prefix
    /// [`TOKEN_COUNT`] and key `tokenizer:{encoding}:{text}` ([`crate::token_count_key`]), the
    /// original's, looked up without joining that key: a message of hundreds of KB is hashed
    /// and compared where it is, not copied first.
    ///
    /// ```
    /// use tokcache::{Cache, TOKEN_COUNT, token_count_key};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// // An entry the original (or any caller) stored under the original's key:
    /// cache.set(TOKEN_COUNT, &token_count_key("cl100k_base", "hello world"), &2u64)?;
    /// assert_eq!(cache.get_token_count("cl100k_base", "hello world"), Some(2));
    /// assert_eq!(cache.get_token_count("o200k_base", "hello world"), None); // another encoding
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_token_count(&self, encoding: &str, text: &str) -> Option<u64> {
        self.read_token_count(encoding, text, ReadOptions::default())
            .unwrap_or_else(|e| {
                log::debug!("get_token_count {encoding}/{}: {e}", text.len());
                None
            })
    }
}

/// How [`Cache::read`], [`Cache::read_many`] and [`Cache::read_token_count`] look a key up.
/// The default is what [`Cache::get`] does: counted in the statistics, a value found on disk
/// kept in the RAM tier.
///
/// ```
/// use tokcache::ReadOptions;
/// let options = ReadOptions::default();
/// assert!(options.counted && options.keep_in_ram); // what get does
/// let peek = ReadOptions::default().uncounted().borrowed();
/// assert!(!peek.counted && !peek.keep_in_ram);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Count the lookup as a hit or a miss (default `true`): `false` for the second look at a
    /// key whose first look was counted (a get-or-compute after it waited for another thread).
    pub counted: bool,
    /// Keep a value found on disk in this process's RAM tier and return that copy (default
    /// `true`); `false` borrows it from the shared map (token ids as `&[u32]`, JSON as `&str`)
    /// and leaves the RAM tier as it is.
    pub keep_in_ram: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            counted: true,
            keep_in_ram: true,
        }
    }
}

impl ReadOptions {
    /// Not counted in the statistics.
    ///
    /// ```
    /// use tokcache::{Cache, ReadOptions};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// assert!(cache.read("test", "k", ReadOptions::default().uncounted())?.is_none());
    /// assert_eq!(cache.get_stats().misses, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn uncounted(mut self) -> Self {
        self.counted = false;
        self
    }

    /// Borrowed from the map, not kept in the RAM tier.
    ///
    /// ```
    /// use tokcache::{Cache, ReadOptions};
    /// # let dir = tempfile::tempdir()?;
    /// Cache::open(dir.path())?.set_tokens("tokens", "k", &[1, 2, 3])?;
    /// let cache = Cache::open(dir.path())?;
    /// let v = cache.read("tokens", "k", ReadOptions::default().borrowed())?.unwrap();
    /// assert_eq!(v.as_tokens(), Some(&[1, 2, 3][..]));
    /// assert_eq!(cache.get_stats().ram_entries, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn borrowed(mut self) -> Self {
        self.keep_in_ram = false;
        self
    }
}
