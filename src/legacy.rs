//! Entries in the original's format: `{prefix}_{md5hex(key)}.json` files holding
//! `{"key","value","timestamp","prefix"}`. Read when a cache is first created in a directory the
//! original wrote, by `import`, and removed by `clear_all`. Other files are never touched.

use std::fs;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::files::{Dir, sync_dir};
use crate::keys::{Key, key_hash};
use crate::keys::{md5_hex, validate_prefix};
use crate::lock::FileLock;
use crate::record::{self, Kind};
use crate::store::Store;
use crate::value::legacy_entry;

/// Splits `{prefix}_{32 lowercase hex}.json` into prefix and digest.
pub(crate) fn parse_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (prefix, md5) = stem.rsplit_once('_')?;
    let hex = md5.len() == 32 && md5.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex && validate_prefix(prefix).is_ok()).then_some((prefix, md5))
}

/// An original-format entry, checked.
#[derive(Debug)]
pub struct OriginalEntry {
    pub prefix: String,
    pub key: String,
    pub timestamp: f64,
    /// The whole object as it was written.
    pub bytes: Vec<u8>,
}

/// Why an original-format entry was not taken.
pub(crate) fn check_entry(bytes: Vec<u8>) -> std::result::Result<OriginalEntry, String> {
    let Some(e) = legacy_entry(&bytes) else {
        return Err("not an entry object {key, value, timestamp, prefix}".into());
    };
    validate_prefix(&e.prefix).map_err(|e| e.to_string())?;
    if !e.timestamp.is_finite() {
        return Err("timestamp is not a finite number".into());
    }
    let (prefix, key, timestamp) = (e.prefix.into_owned(), e.key.into_owned(), e.timestamp);
    Ok(OriginalEntry {
        prefix,
        key,
        timestamp,
        bytes,
    })
}

/// Reads one `{prefix}_{md5}.json` file and checks that its content matches its name.
pub(crate) fn read_file(path: &Path) -> Result<OriginalEntry> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some((prefix, md5)) = parse_file_name(name) else {
        return Err(Error::corrupt(path, "name is not {prefix}_{md5}.json"));
    };
    let meta = fs::symlink_metadata(path).ctx("stat", path)?;
    if !meta.is_file() {
        return Err(Error::corrupt(path, "not a regular file"));
    }
    let bytes = fs::read(path).ctx("read", path)?;
    let entry = check_entry(bytes).map_err(|why| Error::corrupt(path, why))?;
    if entry.prefix != prefix {
        return Err(Error::corrupt(path, "prefix inside differs from the name"));
    }
    if md5_hex(entry.key.as_bytes()) != md5 {
        return Err(Error::corrupt(path, "md5 of the key differs from the name"));
    }
    Ok(entry)
}

/// The original-format entry files of `dir`, by name only.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).ctx("list directory", dir)? {
        let e = e.ctx("list directory", dir)?;
        if e.file_name().to_str().and_then(parse_file_name).is_some() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The file that marks a directory whose original entry files are still to be brought into
/// its cache (docs/format.md, "Migration of the original's files").
pub(crate) const MARKER: &str = "tokcache.migrating";

/// Called when a new cache is created in `dir`, under its lock and before another process can
/// see it: if the original's entry files are there, marks them for migration (durably, before
/// the cache exists, so that a process killed at any point leaves the mark behind).
pub(crate) fn mark(dir: &Dir) -> Result<()> {
    let mut entries = fs::read_dir(&dir.path).ctx("list directory", &dir.path)?;
    let any = entries
        .any(|e| e.is_ok_and(|e| e.file_name().to_str().and_then(parse_file_name).is_some()));
    if any {
        dir.write_file(
            MARKER,
            b"the original's entry files here are being migrated\n",
        )?;
    }
    Ok(())
}

/// Whether the original's files of `dir` are marked for migration (one `stat`).
pub(crate) fn migration_pending(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// Brings the original's files into the cache if the directory is marked for it and no other
/// process is doing so (one that holds the mark's lock: this one then goes on without waiting,
/// and keys not migrated yet are misses meanwhile). Removes the mark when done; a process
/// killed before that leaves it for the next one to open the cache.
pub(crate) fn resume(store: &Store, ttl_secs: f64, now: f64) -> Result<()> {
    let path = store.dir().join(MARKER);
    let Some(lock) = FileLock::try_existing(&path)? else {
        return Ok(());
    };
    if !lock.still_linked() {
        return Ok(()); // finished by the process that held the lock before
    }
    migrate(store, ttl_secs, now)?;
    kill_point!("migration.migrated");
    fs::remove_file(&path).ctx("remove", &path)?;
    sync_dir(store.dir())?;
    drop(lock);
    Ok(())
}

/// Brings the original's `{prefix}_{md5}.json` files in; expired and damaged ones are left
/// alone, and so is every key that has a record already (set, removed, or migrated by a
/// process killed before it finished): the original's files are older than anything written
/// through the cache, and a migration may run again over what it did.
fn migrate(store: &Store, ttl_secs: f64, now: f64) -> Result<()> {
    /// Records appended under one hold of the write lock.
    const BATCH: usize = 1 << 20;
    let files = list_files(store.dir())?;
    let mut buf = Vec::new();
    let mut taken = 0;
    for path in &files {
        match read_file(path) {
            Ok(e) if now - e.timestamp > ttl_secs => {}
            Ok(e) => {
                let hash = key_hash(store.seed(), &e.prefix, e.key.as_bytes());
                let packed = Key::whole(e.key.as_bytes()).packed();
                record::encode(
                    &mut buf,
                    Kind::Legacy,
                    hash,
                    e.timestamp,
                    &e.bytes,
                    store.prefix_field(&e.prefix)?,
                    packed.as_deref().unwrap_or(e.key.as_bytes()),
                );
            }
            Err(err) => log::warn!("not migrated: {err}"),
        }
        if buf.len() >= BATCH {
            taken += store.append_absent(&buf)?.0;
            buf.clear();
            kill_point!("migration.batch");
        }
    }
    if !buf.is_empty() {
        taken += store.append_absent(&buf)?.0;
    }
    if taken > 0 {
        log::info!(
            "migrated {taken} entries of the original format from {}",
            store.dir().display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let md5 = "5d41402abc4b2a76b9719d911017c592";
        assert_eq!(
            parse_file_name(&format!("token_count_{md5}.json")),
            Some(("token_count", md5))
        );
        assert_eq!(parse_file_name(&format!("x_{md5}.json.tmp")), None);
        assert_eq!(parse_file_name(&format!("_{md5}.json")), None);
        assert_eq!(parse_file_name("config.json"), None);
        assert_eq!(
            parse_file_name(&format!("x_{}.json", md5.to_uppercase())),
            None
        );
    }
}
