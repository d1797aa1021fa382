//! The prefix table `prefixes.tkp`: every prefix a cache has interned, numbered in the order
//! they were added. A record of an interned prefix holds its number (1 byte) instead of its
//! text (`docs/format.md`, "Prefix table"). The file only grows: a number, once given, names
//! its prefix for good, in every process.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{IoContext, Result};
use crate::files::{self, Dir};
use crate::hash::xxh3_64;
use crate::record::PrefixNames;

pub(crate) const FILE_NAME: &str = "prefixes.tkp";
const MAGIC: &[u8; 8] = b"TOKCPFX1";
/// A table written in place of one that was lost while records still held its numbers: it
/// takes no prefixes, so that no number is ever given a second meaning.
const LOST: &[u8; 8] = b"TOKCPFX0";
/// Numbers are one byte.
pub(crate) const CAPACITY: usize = 256;
/// An entry: its length byte, the prefix, and a 4-byte checksum.
const ENTRY_OVERHEAD: usize = 5;

/// What this process knows of the table. Numbers resolve without a lock (each name is set
/// once); the reverse map serves writers.
#[derive(Debug)]
pub(crate) struct Prefixes {
    dir: Dir,
    path: PathBuf,
    names: Box<[OnceLock<Box<str>>]>,
    ids: RwLock<HashMap<Box<str>, u8>>,
    /// How the file read last time: its intact length, and whether bytes past it were bad.
    read: Mutex<Parsed>,
    /// The table takes no more prefixes (full or damaged): writers need not ask again.
    closed: AtomicBool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Parsed {
    /// Bytes of the file that hold whole, intact entries (0: no file yet).
    len: u64,
    count: usize,
    /// Bytes past `len` that are not an intact entry: the table takes no new prefixes (a
    /// number must never be given twice), and `verify` says so.
    damaged: bool,
    /// The file's length when it was read: it is read again only once that changed.
    file_len: u64,
}

impl Prefixes {
    /// The table of the cache in `dir`, read if it exists.
    pub(crate) fn open(dir: &Dir) -> Result<Self> {
        let table = Self {
            dir: dir.clone(),
            path: dir.join(FILE_NAME),
            names: (0..CAPACITY).map(|_| OnceLock::new()).collect(),
            ids: RwLock::new(HashMap::new()),
            read: Mutex::new(Parsed::default()),
            closed: AtomicBool::new(false),
        };
        table.reload()?;
        Ok(table)
    }

    /// The prefix numbered `id`, or `None` if the file does not hold it (yet: another process
    /// may have just added it, so an unknown number rereads the file once).
    #[inline]
    pub(crate) fn name(&self, id: u8) -> Option<&str> {
        let slot = &self.names[usize::from(id)];
        if let Some(name) = slot.get() {
            return Some(name);
        }
        self.reload().ok()?;
        slot.get().map(|n| &**n)
    }

    /// Whether the table was found full or damaged: it takes no more prefixes.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The number of `prefix`, if this process knows it.
    pub(crate) fn id(&self, prefix: &str) -> Option<u8> {
        self.ids.read().get(prefix).copied()
    }

    /// The number of `prefix`, adding it to the file if it is new. `None` when the table is
    /// full or damaged: the record then holds its prefix's text. The caller holds the write
    /// lock, so that no other process adds one meanwhile. Before the file is first written,
    /// `holds_numbers` says whether any record names a prefix by number: then the table was
    /// lost, and is replaced by one that takes no prefixes (a number is never given twice).
    pub(crate) fn intern(
        &self,
        prefix: &str,
        holds_numbers: impl FnOnce() -> Result<bool>,
    ) -> Result<Option<u8>> {
        let mut parsed = self.reload()?;
        if let Some(id) = self.id(prefix) {
            return Ok(Some(id));
        }
        if parsed.file_len < MAGIC.len() as u64 && holds_numbers()? {
            log::warn!(
                "{} is missing, but records name prefixes by number: they are unreadable, and \
                 new prefixes are stored in full",
                self.path.display()
            );
            self.dir.write_file(FILE_NAME, LOST)?;
            parsed = self.reload()?;
        }
        if parsed.damaged || parsed.count >= CAPACITY {
            self.closed.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(MAGIC.len() + ENTRY_OVERHEAD + prefix.len());
        if parsed.len == 0 {
            bytes.extend_from_slice(MAGIC);
        }
        bytes.extend_from_slice(&entry(prefix));
        let file = files::file_options(self.dir.mode)
            .create(true)
            .open(&self.path)
            .ctx("open", &self.path)?;
        files::append_at(&file, &self.path, parsed.len, &bytes)?;
        kill_point!("prefix.appended");
        // Durable before any record names it.
        files::sync_file(&file, false).ctx("sync", &self.path)?;
        kill_point!("prefix.synced");
        if parsed.len == 0 {
            self.dir.sync()?;
        }
        let id = parsed.count as u8;
        self.learn(id, prefix);
        let len = parsed.len + bytes.len() as u64;
        *self.read.lock() = Parsed {
            len,
            count: parsed.count + 1,
            damaged: false,
            file_len: len,
        };
        Ok(Some(id))
    }

    /// Whether the file holds bytes that are not an intact entry (for `verify`).
    pub(crate) fn damage(&self) -> Option<String> {
        let parsed = *self.read.lock();
        parsed.damaged.then(|| {
            format!(
                "{}: damaged or lost past byte {} (prefixes after it are not known; new ones are stored in full)",
                self.path.display(),
                parsed.len
            )
        })
    }

    fn learn(&self, id: u8, name: &str) {
        let _ = self.names[usize::from(id)].set(name.into());
        self.ids.write().insert(name.into(), id);
    }

    /// Reads the entries past those already known.
    fn reload(&self) -> Result<Parsed> {
        let mut read = self.read.lock();
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() == read.file_len => return Ok(*read),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(*read),
            Err(e) => return Err(crate::Error::io("stat", &self.path, e)),
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(*read),
            Err(e) => return Err(crate::Error::io("read", &self.path, e)),
        };
        read.file_len = bytes.len() as u64;
        if bytes.len() < MAGIC.len() {
            // Cut short while it was being made: nothing in it was ever used.
            return Ok(*read);
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            read.damaged = true;
            return Ok(*read);
        }
        let mut at = (read.len as usize).max(MAGIC.len());
        let mut count = read.count;
        while let Some((name, len)) = bytes.get(at..).and_then(parse_entry) {
            if count >= CAPACITY {
                break;
            }
            self.learn(count as u8, name);
            count += 1;
            at += len;
        }
        *read = Parsed {
            len: at as u64,
            count,
            damaged: at != bytes.len(),
            file_len: bytes.len() as u64,
        };
        Ok(*read)
    }
}

fn entry_sum(name: &[u8]) -> u32 {
    xxh3_64(name) as u32
}

fn entry(name: &str) -> Vec<u8> {
    let mut e = Vec::with_capacity(ENTRY_OVERHEAD + name.len());
    e.push(name.len() as u8);
    e.extend_from_slice(name.as_bytes());
    e.extend_from_slice(&entry_sum(name.as_bytes()).to_le_bytes());
    e
}

/// The entry at the start of `b` and its length, if it is whole and intact.
fn parse_entry(b: &[u8]) -> Option<(&str, usize)> {
    let len = usize::from(*b.first()?);
    let name = b.get(1..1 + len)?;
    let sum = b.get(1 + len..ENTRY_OVERHEAD + len)?;
    if len == 0 || u32::from_le_bytes(sum.try_into().ok()?) != entry_sum(name) {
        return None;
    }
    Some((std::str::from_utf8(name).ok()?, ENTRY_OVERHEAD + len))
}

impl PrefixNames for Prefixes {
    #[inline]
    fn name(&self, id: u8) -> Option<&str> {
        Prefixes::name(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_numbers() -> Result<bool> {
        Ok(false)
    }

    fn dir(path: &std::path::Path) -> Dir {
        Dir {
            path: path.to_path_buf(),
            mode: 0o644,
        }
    }

    #[test]
    fn numbers_are_given_once_and_seen_by_every_table() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let a = Prefixes::open(&d).unwrap();
        let b = Prefixes::open(&d).unwrap();
        assert_eq!(a.intern("token_count", no_numbers).unwrap(), Some(0));
        assert_eq!(a.intern("scores", no_numbers).unwrap(), Some(1));
        assert_eq!(a.intern("token_count", no_numbers).unwrap(), Some(0));
        // `b` learns them from the file: by number on a read, by name under the lock.
        assert_eq!(b.id("scores"), None);
        assert_eq!(b.name(1), Some("scores"));
        assert_eq!(b.intern("tokens", no_numbers).unwrap(), Some(2));
        assert_eq!(a.name(2), Some("tokens"));
        assert_eq!(a.name(3), None);
        assert!(a.damage().is_none());
    }

    #[test]
    fn a_damaged_table_keeps_what_precedes_the_damage_and_takes_no_new_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let a = Prefixes::open(&d).unwrap();
        for p in ["p0", "p1", "p2"] {
            a.intern(p, no_numbers).unwrap();
        }
        let path = tmp.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = MAGIC.len() + ENTRY_OVERHEAD + 2;
        bytes[second + 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let b = Prefixes::open(&d).unwrap();
        assert_eq!(b.name(0), Some("p0"));
        assert_eq!((b.name(1), b.name(2)), (None, None));
        assert_eq!(
            b.intern("new", no_numbers).unwrap(),
            None,
            "a number given twice"
        );
        assert!(b.is_closed());
        assert!(b.damage().is_some());
    }

    #[test]
    fn a_table_lost_while_records_hold_numbers_takes_no_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let a = Prefixes::open(&d).unwrap();
        assert_eq!(a.intern("lost", || Ok(true)).unwrap(), None);
        assert!(a.is_closed() && a.damage().is_some());
        assert_eq!(std::fs::read(tmp.path().join(FILE_NAME)).unwrap(), LOST);
        // Once a file exists, records are not read again.
        let b = Prefixes::open(&d).unwrap();
        assert_eq!(
            b.intern("new", || panic!("read the records")).unwrap(),
            None
        );
        let other = tempfile::tempdir().unwrap();
        let c = Prefixes::open(&dir(other.path())).unwrap();
        assert_eq!(c.intern("first", no_numbers).unwrap(), Some(0));
        assert_eq!(
            c.intern("second", || panic!("read the records")).unwrap(),
            Some(1)
        );
    }

    #[test]
    fn the_table_holds_256_prefixes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let a = Prefixes::open(&d).unwrap();
        for i in 0..CAPACITY {
            assert_eq!(
                a.intern(&format!("p{i}"), no_numbers).unwrap(),
                Some(i as u8)
            );
        }
        assert!(!a.is_closed());
        assert_eq!(a.intern("one_more", no_numbers).unwrap(), None);
        assert!(a.is_closed());
        let b = Prefixes::open(&d).unwrap();
        assert_eq!(b.name(255), Some("p255"));
        assert!(b.damage().is_none());
    }
}
