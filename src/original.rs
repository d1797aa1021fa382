//! What only the original's users need: its application's prefix and key form for symbol
//! efficiency, and importing its `{prefix}_{md5}.json` files (a cache created in a directory
//! that holds them migrates them by itself; these import others).

use std::path::Path;

use crate::{Cache, Result};

pub use crate::keys::{SYMBOL_EFFICIENCY, symbol_test_key};

/// Imports one `{prefix}_{md5}.json` file of the original, after checking that its content
/// matches its name. `Ok(false)` if it is expired.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let cache = tokcache::Cache::open(dir.path().join("c"))?;
/// let file = dir.path().join("test_5d41402abc4b2a76b9719d911017c592.json");
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
/// std::fs::write(&file, format!(r#"{{"key":"hello","value":1,"timestamp":{now},"prefix":"test"}}"#))?;
/// assert!(tokcache::original::import_file(&cache, &file)?);
/// assert_eq!(cache.get::<u64>("test", "hello"), Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`crate::Error::Io`] if it cannot be read, [`crate::Error::InvalidValue`] if it is not an
/// entry of the original or its name does not match its content, and what storing it returns.
pub fn import_file(cache: &Cache, path: &Path) -> Result<bool> {
    cache.import_original_file(path)
}

/// Stores one original-format entry object (a `{prefix}_{md5}.json` file's content or a line
/// of a JSONL export) with its own timestamp. `Ok(false)` if it is expired.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let cache = tokcache::Cache::open(dir.path())?;
/// let line = br#"{"key":"k","value":[1,2],"timestamp":1e12,"prefix":"test"}"#.to_vec();
/// assert!(tokcache::original::import_entry(&cache, line)?);
/// assert_eq!(cache.get::<Vec<u32>>("test", "k"), Some(vec![1, 2]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`crate::Error::InvalidValue`] if it is not an entry of the original, and what storing it
/// returns.
pub fn import_entry(cache: &Cache, bytes: Vec<u8>) -> Result<bool> {
    cache.import_original(bytes)
}

/// Whether `name` is named like an entry file of the original (`{prefix}_{md5}.json`).
///
/// ```
/// assert!(tokcache::original::is_file_name("test_5d41402abc4b2a76b9719d911017c592.json"));
/// assert!(!tokcache::original::is_file_name("notes.json"));
/// ```
#[must_use]
pub fn is_file_name(name: &str) -> bool {
    Cache::is_original_file_name(name)
}
