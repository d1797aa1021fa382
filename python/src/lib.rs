//! The extension module `tokcache._tokcache`: the native `Cache` class that the Python package's
//! `PersistentTokenCache` extends (python/tokcache/__init__.py adds what is better written in
//! Python: the decorator, the process-wide instance, get-or-compute).
//!
//! Values cross as the original stored them: JSON. A top-level `int` that fits 64 bits and a
//! `float` are stored as numbers (the forms Rust's `get::<u64>` and the token-count calls read);
//! anything else is JSON text written by Python's own `json` encoder, so that what it accepts,
//! rejects and how it converts (tuples to lists) is what the original did.

mod convert;
mod text;

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeWarning, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use tokcache::{Cache as Inner, DEFAULT_PREFIX, Error, ReadOptions, Storage};

use convert::{Stored, to_py, to_stored, tokens_from};
use text::utf8;

pyo3::create_exception!(
    tokcache,
    CorruptCacheError,
    PyOSError,
    "A file of the cache directory is damaged or of an unknown format."
);
pyo3::create_exception!(
    tokcache,
    NewerFormatError,
    PyOSError,
    "The cache directory was written by a newer tokcache, in a format this one does not read."
);
pyo3::create_exception!(
    tokcache,
    DegradedError,
    PyOSError,
    "The cache could not use its directory (it works from RAM, or read-only), so the operation \
     cannot do what it promises (flush, for example)."
);
pyo3::create_exception!(
    tokcache,
    SharedTierError,
    PyOSError,
    "An operation of the shared tier itself (clear_shared) failed, or the cache has none."
);
pyo3::create_exception!(
    tokcache,
    CacheDegradedWarning,
    PyRuntimeWarning,
    "The cache directory could not be used: the cache works from RAM only (or read-only)."
);

/// The Python exception for a tokcache error: `OSError` (of the subclass its errno selects,
/// with the path as `filename`) for I/O, `ValueError` for what the caller passed.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { op, path, source } => {
            let message = format!("{op}: {source}");
            match source.raw_os_error() {
                // OSError(errno, strerror, filename) becomes FileNotFoundError, PermissionError, ...
                Some(errno) => PyOSError::new_err((errno, message, path)),
                None => PyOSError::new_err((0, message, path)),
            }
        }
        Error::InvalidPrefix { .. }
        | Error::InvalidValue(_)
        | Error::TooLarge { .. }
        | Error::InvalidSetting { .. } => PyValueError::new_err(e.to_string()),
        Error::Decode(_) => PyTypeError::new_err(e.to_string()),
        Error::Corrupt { ref path, .. } => {
            CorruptCacheError::new_err((0, e.to_string(), path.clone()))
        }
        Error::NewerFormat { ref path, .. } => {
            NewerFormatError::new_err((0, e.to_string(), path.clone()))
        }
        Error::Degraded { .. } => DegradedError::new_err(e.to_string()),
        Error::Shared { .. } => SharedTierError::new_err(e.to_string()),
        other => PyOSError::new_err(other.to_string()),
    }
}

/// `max_disk_bytes` when it was not given (the directory's bound holds).
const NOT_GIVEN: i64 = -1;

/// The tokenizer of the real workload.
const DEFAULT_ENCODING: &str = "cl100k_base";

/// The cache: a directory shared by every process that opens it, with a RAM tier per process.
///
/// Cache(temp_dir="temp", max_ram_entries=1000, cache_ttl_hours=24, *, max_ram_bytes=None,
///       max_disk_bytes=..., file_mode=None, strict=False, redis_url=None,
///       redis_namespace="tokcache", redis_timeout=0.005)
///
/// max_disk_bytes bounds the directory (every process's, the last one given wins); not
/// given: the directory's bound (1 GiB on a new directory); None or 0: no bound.
///
/// A directory that cannot be used gives a cache that works from RAM only and a
/// CacheDegradedWarning (the original degraded the same way); with strict=True it raises
/// the OSError instead. redis_url adds a shared tier below the directory: a Redis URL, or a
/// Redis Cluster's nodes separated by commas (docs/redis.md); an invalid one raises
/// ValueError, a server that is down only makes the shared tier miss.
#[pyclass(frozen, subclass, module = "tokcache")]
struct Cache {
    /// Boxed: the cache holds cache-line-aligned (128-byte) counters, and Python allocates
    /// objects with 16-byte alignment only.
    inner: Box<Inner>,
    temp_dir: PathBuf,
    max_ram_entries: usize,
    cache_ttl_hours: f64,
    /// The shared tier's settings as given (a pickled cache carries them).
    redis_url: Option<String>,
    redis_namespace: Option<String>,
    redis_timeout: Option<f64>,
    /// The other settings as given, which a pickled cache carries too.
    max_ram_bytes: Option<usize>,
    /// As given: -1 when not given, None for none.
    max_disk_bytes: Option<i64>,
    file_mode: Option<u32>,
    strict: bool,
}

impl Cache {
    fn prefix<'a>(prefix: Option<&'a Bound<'_, PyAny>>) -> PyResult<&'a str> {
        prefix.map_or(Ok(DEFAULT_PREFIX), |p| utf8(p, "prefix"))
    }

    /// Runs a read: with the GIL released where it may wait on the network (a miss asks the
    /// Redis tier), holding it otherwise (a lookup in the shared map takes well under a
    /// microsecond, less than releasing and taking back the GIL costs).
    fn read<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&Inner) -> T + Send) -> T {
        let inner = &*self.inner;
        if self.redis_url.is_some() {
            py.detach(|| f(inner))
        } else {
            f(inner)
        }
    }
}

#[pymethods]
impl Cache {
    #[new]
    #[pyo3(signature = (temp_dir = PathBuf::from("temp"), max_ram_entries = 1000,
        cache_ttl_hours = 24.0, *, max_ram_bytes = None, max_disk_bytes = Some(NOT_GIVEN),
        file_mode = None, strict = false, redis_url = None, redis_namespace = None,
        redis_timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        temp_dir: PathBuf,
        max_ram_entries: usize,
        cache_ttl_hours: f64,
        max_ram_bytes: Option<usize>,
        max_disk_bytes: Option<i64>,
        file_mode: Option<u32>,
        strict: bool,
        redis_url: Option<String>,
        redis_namespace: Option<String>,
        redis_timeout: Option<f64>,
    ) -> PyResult<Self> {
        if !(cache_ttl_hours.is_finite() && cache_ttl_hours >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "cache_ttl_hours must be a finite number >= 0, not {cache_ttl_hours}"
            )));
        }
        let mut builder = Inner::builder(&temp_dir)
            .max_ram_entries(max_ram_entries)
            .ttl_hours(cache_ttl_hours);
        if let Some(bytes) = max_ram_bytes {
            builder = builder.max_ram_bytes(bytes);
        }
        match max_disk_bytes {
            Some(NOT_GIVEN) => {}
            None => builder = builder.max_disk_bytes(0),
            Some(n) => {
                let n = u64::try_from(n).map_err(|_| {
                    PyValueError::new_err(format!(
                        "max_disk_bytes must be a number of bytes >= 0 or None, not {n}"
                    ))
                })?;
                builder = builder.max_disk_bytes(n);
            }
        }
        if let Some(mode) = file_mode {
            builder = builder.file_mode(mode);
        }
        if let Some(url) = &redis_url {
            builder = builder.redis(url);
            if let Some(ns) = &redis_namespace {
                builder = builder.redis_namespace(ns);
            }
            if let Some(secs) = redis_timeout {
                let timeout = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|t| !t.is_zero())
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "redis_timeout must be a number of seconds > 0, not {secs}"
                        ))
                    })?;
                builder = builder.redis_timeout(timeout);
            }
            // A shared tier that cannot be is a mistake of the caller's, not of the machine:
            // raised whether strict or not.
            builder.check().map_err(py_err)?;
        } else if redis_namespace.is_some() || redis_timeout.is_some() {
            return Err(PyValueError::new_err(
                "redis_namespace and redis_timeout need redis_url",
            ));
        }
        let inner = if strict {
            py.detach(|| builder.open()).map_err(py_err)?
        } else {
            let (inner, why) = py.detach(|| builder.open_or_ram_only());
            if let Some(e) = why {
                let message = format!("tokcache works from RAM only: {e}");
                let message = std::ffi::CString::new(message.replace('\0', " "))
                    .unwrap_or_else(|_| c"tokcache works from RAM only".into());
                PyErr::warn(py, &py.get_type::<CacheDegradedWarning>(), &message, 1)?;
            }
            inner
        };
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("tokcache",))?;
        logger.call_method1("info", (inner.banner(),))?;
        Ok(Self {
            inner: Box::new(inner),
            temp_dir,
            max_ram_entries,
            cache_ttl_hours,
            redis_url,
            redis_namespace,
            redis_timeout,
            max_ram_bytes,
            max_disk_bytes,
            file_mode,
            strict,
        })
    }

    /// The value stored under key, or default (None) on a miss or an expired entry.
    /// RAM tier first, then the shared directory (a hit there goes into the RAM tier).
    #[pyo3(signature = (key, prefix = None, default = None))]
    #[pyo3(text_signature = "($self, key, prefix='token', default=None)")]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        found(
            py,
            self.read(py, |c| c.read(prefix, key, ReadOptions::default())),
            default,
        )
    }

    /// Stores value (None, bool, int of any size, float, str, list/tuple, dict: what json
    /// holds) under key, in RAM and in the shared directory. NaN and infinities raise
    /// ValueError; objects json cannot hold raise TypeError.
    #[pyo3(signature = (key, value, prefix = None))]
    #[pyo3(text_signature = "($self, key, value, prefix='token')")]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        let value = to_stored(py, value)?;
        let inner = &self.inner;
        // The write lock can wait (another process appending or publishing a compaction).
        py.detach(|| match &value {
            Stored::Int(i) => inner.set(prefix, key, i),
            Stored::Float(f) => inner.set(prefix, key, f),
            Stored::Json(raw) => inner.set(prefix, key, &**raw),
        })
        .map_err(py_err)
    }

    /// Removes the entry of key; True if there was one.
    #[pyo3(signature = (key, prefix = None))]
    #[pyo3(text_signature = "($self, key, prefix='token')")]
    fn remove(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        let inner = &self.inner;
        py.detach(|| inner.remove(prefix, key)).map_err(py_err)
    }

    /// The values of many keys of one prefix, in their order (default for each miss). The
    /// lookups' memory reads overlap, so a key costs less than a get.
    #[pyo3(signature = (keys, prefix = None, default = None))]
    #[pyo3(text_signature = "($self, keys, prefix='token', default=None)")]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        prefix: Option<&Bound<'py, PyAny>>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let prefix = Self::prefix(prefix)?;
        let owned: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        let keys = owned
            .iter()
            .map(|k| utf8(k, "key"))
            .collect::<PyResult<Vec<&str>>>()?;
        let default = default.unwrap_or_else(|| py.None());
        let out = PyList::empty(py);
        for found in self.read(py, |c| c.read_many(prefix, &keys, ReadOptions::default())) {
            match found.map_err(py_err)? {
                Some(v) => out.append(to_py(py, &v)?)?,
                None => out.append(default.clone_ref(py))?,
            }
        }
        Ok(out)
    }

    /// Stores token ids (a list of ints in 0..2**32, or a buffer of 4-byte unsigned ints such
    /// as array('I')) so that get_tokens reads them without JSON.
    #[pyo3(signature = (key, tokens, prefix = None))]
    #[pyo3(text_signature = "($self, key, tokens, prefix='token')")]
    fn set_tokens(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        tokens: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        let ids = tokens_from(tokens)?;
        let inner = &self.inner;
        py.detach(|| inner.set_tokens(prefix, key, &ids))
            .map_err(py_err)
    }

    /// The token ids stored with set_tokens, or None on a miss (or a value of another kind).
    #[pyo3(signature = (key, prefix = None))]
    #[pyo3(text_signature = "($self, key, prefix='token')")]
    fn get_tokens<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        prefix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        let found = self
            .read(py, |c| c.read(prefix, key, ReadOptions::default()))
            .map_err(py_err)?;
        found
            .as_ref()
            .and_then(|v| v.as_tokens())
            .map(|ids| PyList::new(py, ids))
            .transpose()
    }

    /// The token count cached for text: the original's entry of prefix "token_count" and key
    /// "tokenizer:{encoding}:{text}", looked up without building that key.
    #[pyo3(signature = (text, encoding = None))]
    #[pyo3(text_signature = "($self, text, encoding='cl100k_base')")]
    fn get_token_count(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        encoding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let text = utf8(text, "text")?;
        let encoding = encoding.map_or(Ok(DEFAULT_ENCODING), |e| utf8(e, "encoding"))?;
        self.read(py, |c| {
            c.read_token_count(encoding, text, ReadOptions::default())
        })
        .map_err(py_err)
    }

    /// Stores the token count of text: the same entry as set("tokenizer:{encoding}:{text}",
    /// count, prefix="token_count"), without building that key.
    #[pyo3(signature = (text, count, encoding = None))]
    #[pyo3(text_signature = "($self, text, count, encoding='cl100k_base')")]
    fn set_token_count(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        count: u64,
        encoding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let text = utf8(text, "text")?;
        let encoding = encoding.map_or(Ok(DEFAULT_ENCODING), |e| utf8(e, "encoding"))?;
        let inner = &self.inner;
        py.detach(|| inner.set_token_count(encoding, text, count))
            .map_err(py_err)
    }

    /// The original's nine fields (ram_entries, disk_files, ram_hits, disk_hits, misses, saves,
    /// evictions, hit_rate_percent, temp_dir), then live_bytes, dead_bytes, segment_bytes,
    /// disk_bytes (what the cache's files take on disk), max_disk_bytes (the directory's
    /// bound, None: none), disk_evictions, expired_reclaimed (of every process), index_generation, recent_index_records, tail_records and storage ("disk", "read_only",
    /// "ram_only").
    fn get_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.get_stats();
        let d = PyDict::new(py);
        d.set_item("ram_entries", s.ram_entries)?;
        d.set_item("disk_files", s.disk_files)?;
        d.set_item("ram_hits", s.ram_hits)?;
        d.set_item("disk_hits", s.disk_hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("saves", s.saves)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("hit_rate_percent", s.hit_rate_percent)?;
        d.set_item("temp_dir", s.temp_dir)?;
        d.set_item("live_bytes", s.live_bytes)?;
        d.set_item("dead_bytes", s.dead_bytes)?;
        d.set_item("segment_bytes", s.segment_bytes)?;
        d.set_item("disk_bytes", s.disk_bytes)?;
        d.set_item("max_disk_bytes", s.max_disk_bytes)?;
        d.set_item("disk_evictions", s.disk_evictions)?;
        d.set_item("expired_reclaimed", s.expired_reclaimed)?;
        d.set_item("index_generation", s.index_generation)?;
        d.set_item("recent_index_records", s.recent_index_records)?;
        d.set_item("tail_records", s.tail_records)?;
        d.set_item("storage", storage_name(s.storage))?;
        if let Some(t) = s.shared {
            d.set_item("shared_hits", s.shared_hits)?;
            d.set_item("shared_misses", t.misses)?;
            d.set_item("shared_errors", t.errors)?;
            d.set_item("shared_timeouts", t.timeouts)?;
            d.set_item("shared_skipped", t.skipped)?;
            d.set_item("shared_written", t.written)?;
            d.set_item("shared_dropped", t.dropped)?;
            d.set_item("shared_queued", t.queued)?;
        }
        Ok(d)
    }

    /// The counters of every process using the directory, summed (``get_stats`` tells this
    /// cache's own): hits by tier, misses, saves, removals, evictions, expired entries dropped,
    /// compactions; ``processes``, the live handles, and ``live``, a dict per live handle.
    fn pool_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let pool = py.detach(|| inner.pool_stats()).map_err(py_err)?;
        let counts = |c: &tokcache::PoolCounts| -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            d.set_item("ram_hits", c.ram_hits)?;
            d.set_item("disk_hits", c.disk_hits)?;
            d.set_item("shared_hits", c.shared_hits)?;
            d.set_item("misses", c.misses)?;
            d.set_item("saves", c.sets)?;
            d.set_item("removals", c.removals)?;
            d.set_item("ram_evictions", c.ram_evictions)?;
            d.set_item("disk_evictions", c.disk_evictions)?;
            d.set_item("expired", c.expired)?;
            d.set_item("expired_reclaimed", c.expired_reclaimed)?;
            d.set_item("compactions", c.compactions)?;
            d.set_item("compaction_seconds", c.compaction_seconds)?;
            d.set_item("shared_errors", c.shared_errors)?;
            d.set_item("shared_drops", c.shared_drops)?;
            d.set_item(
                "hit_rate_percent",
                (c.hit_rate() * 10_000.0).round() / 100.0,
            )?;
            Ok(d)
        };
        let d = counts(&pool.totals)?;
        d.set_item("processes", pool.processes.len())?;
        let live = PyList::empty(py);
        for p in &pool.processes {
            let row = counts(&p.counts)?;
            row.set_item("pid", p.pid)?;
            row.set_item("started", p.started)?;
            row.set_item("last_seen", p.last_seen)?;
            live.append(row)?;
        }
        d.set_item("live", live)?;
        Ok(d)
    }

    /// Sets every count of the pool's statistics to zero.
    fn reset_pool_stats(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| inner.reset_pool_stats()).map_err(py_err)
    }

    /// Removes the expired entries from the directory (reclaiming their space); returns how
    /// many.
    fn clear_expired(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = &self.inner;
        py.detach(|| inner.clear_expired()).map_err(py_err)
    }

    /// Removes every entry, in RAM and in the directory (the original's entry files included;
    /// other files are left alone).
    fn clear_all(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| inner.clear_all()).map_err(py_err)
    }

    /// Deletes this cache's entries (its namespace) from the shared tier, in batches (never
    /// FLUSHDB); returns how many. Raises SharedTierError without a shared tier, or when Redis
    /// fails meanwhile.
    fn clear_shared(&self, py: Python<'_>) -> PyResult<u64> {
        let inner = &self.inner;
        py.detach(|| inner.clear_shared()).map_err(py_err)
    }

    /// Makes everything set before durable (fsync) and, with a shared tier, waits until it is
    /// written there too (or given up, within the tier's timeouts). Raises DegradedError for a
    /// cache that works from RAM.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| inner.flush()).map_err(py_err)
    }

    /// Merges the log into a new index now (the cache does it by itself as it fills).
    /// Returns what it did: expired entries dropped, bytes freed, segments rewritten, the new
    /// index generation.
    fn compact<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let report = py.detach(|| inner.compact()).map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("expired", report.expired)?;
        d.set_item("evicted", report.evicted)?;
        d.set_item("bytes_freed", report.bytes_freed)?;
        d.set_item("segments_rewritten", report.segments_rewritten)?;
        d.set_item("generation", report.generation)?;
        Ok(d)
    }

    /// The original's start-up banner (logged at INFO on the "tokcache" logger when the cache
    /// opens).
    fn banner(&self) -> String {
        self.inner.banner()
    }

    /// The cache directory, as given.
    #[getter]
    fn temp_dir(&self) -> PathBuf {
        self.temp_dir.clone()
    }

    /// The shared tier's Redis URL (or cluster nodes), as given; None without one.
    #[getter]
    fn redis_url(&self) -> Option<String> {
        self.redis_url.clone()
    }

    /// The shared tier's key namespace as given (None: the default, "tokcache").
    #[getter]
    fn redis_namespace(&self) -> Option<String> {
        self.redis_namespace.clone()
    }

    /// The shared tier's timeout in seconds as given (None: the default, 0.005).
    #[getter]
    fn redis_timeout(&self) -> Option<f64> {
        self.redis_timeout
    }

    /// The RAM tier's size in entries.
    #[getter]
    fn max_ram_entries(&self) -> usize {
        self.max_ram_entries
    }

    /// The RAM tier's byte bound as given (None: the default, 16 MiB).
    #[getter]
    fn max_ram_bytes(&self) -> Option<usize> {
        self.max_ram_bytes
    }

    /// The disk bound as given (-1: not given, the directory's; None: none), which a pickled
    /// cache carries. `get_stats()["max_disk_bytes"]` is the bound in force.
    #[getter]
    fn _max_disk_bytes_given(&self) -> Option<i64> {
        self.max_disk_bytes
    }

    /// The permission bits of new files as given (None: the default, 0o600).
    #[getter]
    fn file_mode(&self) -> Option<u32> {
        self.file_mode
    }

    /// Whether a directory that cannot be used raises (True) or gives a RAM-only cache.
    #[getter]
    fn strict(&self) -> bool {
        self.strict
    }

    /// The TTL in hours.
    #[getter]
    fn cache_ttl_hours(&self) -> f64 {
        self.cache_ttl_hours
    }

    /// How the cache keeps its entries: "disk", "read_only" (the directory is not writable:
    /// new entries stay in RAM) or "ram_only".
    #[getter]
    fn storage(&self) -> &'static str {
        storage_name(self.inner.storage())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().name()?;
        let this = slf.get();
        let dir = PyString::new(slf.py(), &this.temp_dir.to_string_lossy()).repr()?;
        Ok(format!(
            "{name}(temp_dir={dir}, max_ram_entries={}, cache_ttl_hours={:?}, storage='{}')",
            this.max_ram_entries,
            this.cache_ttl_hours,
            storage_name(this.inner.storage())
        ))
    }
}

/// The Python value of what a lookup found, `default` (`None`) for a miss.
fn found(
    py: Python<'_>,
    lookup: tokcache::Result<Option<tokcache::ValueRef>>,
    default: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    match lookup.map_err(py_err)? {
        Some(v) => to_py(py, &v),
        None => Ok(default.unwrap_or_else(|| py.None())),
    }
}

fn storage_name(storage: Storage) -> &'static str {
    match storage {
        Storage::Disk => "disk",
        Storage::ReadOnly => "read_only",
        Storage::RamOnly => "ram_only",
    }
}

/// The package's own helpers (not methods of the class users see): called through the
/// module functions below.
impl Cache {
    /// Like get, but not counted in the statistics (for a second look at a key).
    fn _peek(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        found(
            py,
            self.read(py, |c| {
                c.read(prefix, key, ReadOptions::default().uncounted())
            }),
            default,
        )
    }

    /// Like get, with the GIL released around the lookup: the Python benchmark's measure of
    /// what keeping the GIL during a get saves (get keeps it).
    fn _get_nogil(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let key = utf8(key, "key")?;
        let prefix = Self::prefix(prefix)?;
        let inner = &self.inner;
        found(
            py,
            py.detach(|| inner.read(prefix, key, ReadOptions::default())),
            None,
        )
    }

    /// The cached part of count_messages, in one call: the cookbook rule's framing tokens
    /// plus the counts of every value found (looked up with the GIL released), and the values
    /// whose counts are missing (a text once per occurrence), for the caller to tokenize.
    fn _count_cached<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        encoding: &Bound<'py, PyAny>,
        tokens_per_message: i64,
        tokens_per_name: i64,
        reply_tokens: i64,
    ) -> PyResult<(i64, Bound<'py, PyList>)> {
        let encoding = utf8(encoding, "encoding")?;
        let mut total = reply_tokens;
        let mut values: Vec<Bound<'py, PyAny>> = Vec::new();
        for (i, message) in messages.try_iter()?.enumerate() {
            let message = message?;
            let Ok(fields) = message.cast::<PyDict>() else {
                return Err(PyTypeError::new_err(format!(
                    "message {i} must be a dict, not {}",
                    message.get_type().name()?
                )));
            };
            total += tokens_per_message;
            for (key, value) in fields.iter() {
                let key = utf8(&key, "a message's key")?;
                if key == "name" {
                    total += tokens_per_name;
                }
                if value.is_instance_of::<PyString>() {
                    values.push(value);
                } else if key == "content"
                    && let Ok(parts) = value.cast::<PyList>()
                {
                    for (j, part) in parts.iter().enumerate() {
                        values.push(text_part(&part, i, j)?);
                    }
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "message {i}: {key:?} is {}, not text (only str values, and a content \
                         list of text parts, can be counted)",
                        value.get_type().name()?
                    )));
                }
            }
        }
        let texts: Vec<&str> = values
            .iter()
            .map(|v| utf8(v, "a value"))
            .collect::<PyResult<_>>()?;
        let inner = &self.inner;
        let found = py.detach(|| inner.get_token_counts(encoding, &texts));
        let missing = PyList::empty(py);
        for (value, n) in values.iter().zip(found) {
            match n {
                Some(n) => total += i64::try_from(n).unwrap_or(i64::MAX),
                None => missing.append(value)?,
            }
        }
        Ok((total, missing))
    }

    /// Like get_token_count, not counted in the statistics.
    fn _peek_token_count(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        encoding: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let text = utf8(text, "text")?;
        let encoding = encoding.map_or(Ok(DEFAULT_ENCODING), |e| utf8(e, "encoding"))?;
        self.read(py, |c| {
            c.read_token_count(encoding, text, ReadOptions::default().uncounted())
        })
        .map_err(py_err)
    }
}

/// get without counting it in the statistics: the second look of get_or_set.
#[pyfunction]
#[pyo3(signature = (cache, key, prefix = None, default = None))]
fn _peek(
    py: Python<'_>,
    cache: &Bound<'_, Cache>,
    key: &Bound<'_, PyAny>,
    prefix: Option<&Bound<'_, PyAny>>,
    default: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    cache.get()._peek(py, key, prefix, default)
}

/// get_token_count without counting it: the second look of count_tokens.
#[pyfunction]
#[pyo3(signature = (cache, text, encoding = None))]
fn _peek_token_count(
    py: Python<'_>,
    cache: &Bound<'_, Cache>,
    text: &Bound<'_, PyAny>,
    encoding: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<u64>> {
    cache.get()._peek_token_count(py, text, encoding)
}

/// get with the GIL released around the lookup: the benchmark's measure of what keeping it
/// saves.
#[pyfunction]
#[pyo3(signature = (cache, key, prefix = None))]
fn _get_nogil(
    py: Python<'_>,
    cache: &Bound<'_, Cache>,
    key: &Bound<'_, PyAny>,
    prefix: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    cache.get()._get_nogil(py, key, prefix)
}

/// The cached part of count_messages (see `Cache::_count_cached`).
#[pyfunction]
#[pyo3(signature = (cache, messages, encoding, tokens_per_message, tokens_per_name, reply_tokens))]
fn _count_cached<'py>(
    py: Python<'py>,
    cache: &Bound<'py, Cache>,
    messages: &Bound<'py, PyAny>,
    encoding: &Bound<'py, PyAny>,
    tokens_per_message: i64,
    tokens_per_name: i64,
    reply_tokens: i64,
) -> PyResult<(i64, Bound<'py, PyList>)> {
    cache.get()._count_cached(
        py,
        messages,
        encoding,
        tokens_per_message,
        tokens_per_name,
        reply_tokens,
    )
}

/// The logical name of an entry: "{prefix}_{md5(key)}", the stem of the original's file.
#[pyfunction]
#[pyo3(signature = (key, prefix = None), text_signature = "(key, prefix='token')")]
fn logical_name(key: &Bound<'_, PyAny>, prefix: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    let key = utf8(key, "key")?;
    let prefix = Cache::prefix(prefix)?;
    tokcache::validate_prefix(prefix).map_err(py_err)?;
    Ok(tokcache::logical_name(prefix, key))
}

#[pymodule]
fn _tokcache(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Cache>()?;
    m.add_function(wrap_pyfunction!(logical_name, m)?)?;
    m.add_function(wrap_pyfunction!(_peek, m)?)?;
    m.add_function(wrap_pyfunction!(_peek_token_count, m)?)?;
    m.add_function(wrap_pyfunction!(_get_nogil, m)?)?;
    m.add_function(wrap_pyfunction!(_count_cached, m)?)?;
    m.add("CorruptCacheError", py.get_type::<CorruptCacheError>())?;
    m.add("NewerFormatError", py.get_type::<NewerFormatError>())?;
    m.add("DegradedError", py.get_type::<DegradedError>())?;
    m.add("SharedTierError", py.get_type::<SharedTierError>())?;
    m.add(
        "CacheDegradedWarning",
        py.get_type::<CacheDegradedWarning>(),
    )?;
    Ok(())
}

/// The text of part `j` of message `i`'s content list: a `{"type": "text", "text": str}`.
fn text_part<'py>(part: &Bound<'py, PyAny>, i: usize, j: usize) -> PyResult<Bound<'py, PyAny>> {
    let Ok(part) = part.cast::<PyDict>() else {
        return Err(PyTypeError::new_err(format!(
            "message {i}: content part {j} must be a dict, not {}",
            part.get_type().name()?
        )));
    };
    let kind = part.get_item("type")?;
    let is_text = kind
        .as_ref()
        .is_some_and(|k| k.extract::<String>().is_ok_and(|k| k == "text"));
    if !is_text {
        let kind = kind.map_or_else(|| "None".to_string(), |k| k.to_string());
        return Err(PyValueError::new_err(format!(
            "message {i}: content part {j} is of type {kind:?}: only text parts can be counted"
        )));
    }
    match part.get_item("text")? {
        Some(t) if t.is_instance_of::<PyString>() => Ok(t),
        other => Err(PyTypeError::new_err(format!(
            "message {i}: content part {j}'s \"text\" must be str, not {}",
            other.map_or_else(
                || Ok("missing".into()),
                |t| t.get_type().name().map(|n| n.to_string())
            )?
        ))),
    }
}
