//! The one public error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in tokcache.
///
/// ```
/// use tokcache::{Cache, Error};
/// # let dir = tempfile::tempdir()?;
/// let cache = Cache::open(dir.path())?;
/// match cache.set("a/b", "k", &1) {
///     Err(Error::InvalidPrefix { prefix, reason }) => assert_eq!((prefix.as_str(), reason), ("a/b", "only ASCII letters, digits, '_', '-' and '.' are allowed")),
///     other => panic!("{other:?}"),
/// }
/// assert!(matches!(cache.set("test", "k", &f64::NAN), Err(Error::InvalidValue(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed; `op` says what the cache was doing, `path` on which file.
    Io {
        /// What the cache was doing ("open segment", "create directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// A prefix that is not 1-64 of `[A-Za-z0-9_.-]`, or that starts with `.`.
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value that JSON cannot hold (NaN, infinity) or that cannot be serialized.
    InvalidValue(String),
    /// A key or value over the size a record can hold.
    TooLarge {
        /// What was too large ("key and value").
        what: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A stored value could not be decoded into the type asked for.
    Decode(serde_json::Error),
    /// A file of the cache is damaged or of an unknown format.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the cache was written by a newer release, in a format this one does not
    /// read. The directory is left as it is (a rebuild would lose what the newer release
    /// wrote); [`crate::Cache::open`] fails with it ([`crate::CacheBuilder::open_or_ram_only`]
    /// gives a RAM-only cache).
    NewerFormat {
        /// The file of the newer format.
        path: PathBuf,
        /// Its format version.
        version: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A setting of [`crate::CacheBuilder`] that is not valid (a NaN or negative TTL, say).
    InvalidSetting {
        /// The setting ("ttl").
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The cache could not use its directory and works from RAM only (or read-only), so the
    /// operation cannot do what it promises (for example `flush`).
    Degraded {
        /// Why, in words.
        reason: String,
    },
    /// An operation of the shared tier itself ([`crate::Cache::clear_shared`]) failed, or the
    /// cache has no shared tier. Lookups and writes never fail with it: they go on from the
    /// local tiers.
    Shared {
        /// What failed, in words.
        reason: String,
    },
}

/// `Result` with tokcache's [`Error`].
///
/// ```
/// fn count(cache: &tokcache::Cache, text: &str) -> tokcache::Result<u64> {
///     cache.token_count_or_insert_with("cl100k_base", text, || text.len() as u64 / 4)
/// }
/// # let dir = tempfile::tempdir()?;
/// assert_eq!(count(&tokcache::Cache::open(dir.path())?, "12345678")?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The error for a file of format `version`, if this build does not read that format:
    /// [`Error::NewerFormat`] above `supported`, else [`Error::Corrupt`].
    pub(crate) fn unknown_version(path: &Path, version: u32, supported: u32) -> Self {
        if version > supported {
            Error::NewerFormat {
                path: path.to_path_buf(),
                version,
                supported,
            }
        } else {
            Error::corrupt(
                path,
                format!("format version {version}, this build reads {supported}"),
            )
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Attaches the operation and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            Error::InvalidPrefix { prefix, reason } => {
                write!(f, "invalid prefix {prefix:?}: {reason}")
            }
            Error::InvalidValue(why) => write!(f, "invalid value: {why}"),
            Error::TooLarge { what, len, max } => {
                write!(f, "{what} of {len} bytes is over the limit of {max} bytes")
            }
            Error::Decode(e) => write!(f, "stored value does not decode into the asked type: {e}"),
            Error::Corrupt { path, reason } => {
                write!(f, "corrupt cache file {}: {reason}", path.display())
            }
            Error::NewerFormat {
                path,
                version,
                supported,
            } => write!(
                f,
                "{} was written by a newer tokcache (format {version}; this one reads up to \
                 {supported}): the directory is left as it is",
                path.display()
            ),
            Error::InvalidSetting { name, reason } => write!(f, "invalid {name}: {reason}"),
            Error::Degraded { reason } => write!(f, "cache is degraded: {reason}"),
            Error::Shared { reason } => write!(f, "shared tier: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Decode(e) => Some(e),
            _ => None,
        }
    }
}
