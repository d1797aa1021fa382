//! The log (a generation's active segment) as one process holds it: its file, the mappings
//! records are read through, the writer's writable mapping, and its length on disk.
//!
//! What the log *holds* (where the tail begins, how far it is scanned, the tail table) is the
//! view's; this type only owns the file and its mappings, and keeps the rules for them in one
//! place: nothing is borrowed past the published records, space is reserved before it is
//! written, a file is only ever shrunk down to what was published.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::files;
use crate::map::{self, ReadMap, WriteMap};
use crate::segment;
use crate::sys;

/// Appends this large are written with `pwrite`, not copied in through the writer's mapping:
/// that copy first makes the mapping's pages, which for space reserved but never written means
/// zeroing them, and `pwrite` fills whole pages itself. (1200 sets of 100 KB keys here: 140-163
/// ms through the mapping, 107-110 ms with `pwrite`.) Smaller records keep the mapping, which
/// saves a system call each.
const PWRITE_FROM: usize = 64 << 10;

/// The log's file and mappings. The file is `None` until the log exists (a reader may load a
/// generation before any writer has made its log).
pub(super) struct Log {
    path: PathBuf,
    file: Option<File>,
    /// The log as scanned: remapped as it grows, and showing only the published records.
    map: Arc<ReadMap>,
    /// The log up to the view's `log_start`, which the indexes cover, mapped once: index hits
    /// in the log do not go through `map`, which is remapped as the log grows.
    head: Arc<ReadMap>,
    /// Length of the file (preallocated past the published length), as last seen.
    len: u64,
    /// The writer's writable mapping, from a 2 MiB boundary below the appends to `len`.
    write: Option<WriteMap>,
    /// The control page's count of announced trims when `len` was last read under the write
    /// lock (`None`: never). While it is unchanged no process has shrunk the file since.
    trims_seen: Option<u64>,
}

impl Log {
    /// The log at `path`, not opened yet.
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            map: Arc::new(ReadMap::empty()),
            head: Arc::new(ReadMap::empty()),
            len: 0,
            write: None,
            trims_seen: None,
        }
    }

    /// The same file (a handle of its own) and read mappings, without the writable mapping:
    /// what compaction reads while writers go on.
    pub(super) fn snapshot(&self) -> Result<Self> {
        let file = match &self.file {
            Some(f) => Some(f.try_clone().ctx("duplicate segment handle", &self.path)?),
            None => None,
        };
        Ok(Self {
            path: self.path.clone(),
            file,
            map: Arc::clone(&self.map),
            head: Arc::clone(&self.head),
            len: self.len,
            write: None,
            trims_seen: None,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Length of the file as last seen (reserved space included).
    pub(super) fn file_len(&self) -> u64 {
        self.len
    }

    /// The log as scanned (see [`Log::show`]).
    pub(super) fn map(&self) -> &Arc<ReadMap> {
        &self.map
    }

    /// The log up to where the indexes stop covering it (see [`Log::map_head`]).
    pub(super) fn head(&self) -> &Arc<ReadMap> {
        &self.head
    }

    /// Takes the opened file and maps it, with nothing visible until [`Log::show`].
    pub(super) fn attach(&mut self, file: File) -> Result<()> {
        (self.map, self.len) = map_whole(&file, &self.path)?;
        self.file = Some(file);
        Ok(())
    }

    /// Maps the first `len` bytes once, for the indexes' hits in the log (see `head`).
    pub(super) fn map_head(&mut self, len: u64) -> Result<()> {
        if let Some(file) = &self.file {
            self.head = Arc::new(segment::map_segment(file, &self.path, len)?);
        }
        Ok(())
    }

    /// Lets the first `visible` bytes (published records) be borrowed through [`Log::map`],
    /// remapping the file first if it grew past the mapping.
    pub(super) fn show(&mut self, visible: u64) -> Result<()> {
        if (self.map.mapped_len() as u64) < visible
            && let Some(file) = &self.file
        {
            (self.map, self.len) = map_whole(file, &self.path)?;
        }
        self.map.show(visible);
        Ok(())
    }

    /// A fresh mapping of the file as it is now, never past `end` (see `View::scan_rest`).
    /// `None` if the log is not open or cannot be read.
    pub(super) fn map_up_to(&self, end: u64) -> Option<ReadMap> {
        segment::map_segment(self.file.as_ref()?, &self.path, end).ok()
    }

    /// The file, which an append needs: a writer opens (or makes) the log before it appends.
    fn file(&self) -> Result<&File> {
        self.file.as_ref().ok_or_else(|| {
            let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
            Error::io("append to segment", &self.path, missing)
        })
    }

    /// Makes sure the length this writer believes is the file's, before it appends under the
    /// write lock: if a trim was announced since it last looked (`trims`: the control page's
    /// count), the file is statted again and the writable mapping, which may reach past the
    /// new end, dropped. A compaction killed between its trim and the publication of its
    /// generation leaves the same generation with a shorter log: writing through the old
    /// mapping past the end would kill this process with SIGBUS, or, inside the last page,
    /// put records where the file does not keep them.
    pub(super) fn confirm_len(&mut self, trims: u64) -> Result<()> {
        if self.trims_seen == Some(trims) {
            return Ok(());
        }
        if let Some(file) = &self.file {
            self.len = file.metadata().ctx("stat segment", &self.path)?.len();
            self.write = None;
            self.trims_seen = Some(trims);
        }
        Ok(())
    }

    /// Writes `bytes` at `off`, the published length, after reserving the space for them
    /// (`start`: where the tail begins, which sets the reservation's step). Small appends go
    /// through the writable mapping while `mapped` allows it; that is turned off for good when
    /// the space cannot be allocated, and `pwrite` then reports a full disk itself.
    pub(super) fn append(
        &mut self,
        start: u64,
        off: u64,
        bytes: &[u8],
        mapped: &AtomicBool,
    ) -> Result<()> {
        let end = off + bytes.len() as u64;
        self.len = segment::reserve(self.file()?, &self.path, start, self.len, end)?;
        kill_point!("append.reserved");
        if bytes.len() < PWRITE_FROM
            && mapped.load(Ordering::Relaxed)
            && self.write_mapped(off, bytes, mapped)?
        {
            return Ok(());
        }
        files::append_at(self.file()?, &self.path, off, bytes)
    }

    /// Copies `bytes` to `off` through the writable mapping, (re)mapping it after growth.
    /// `false`: not done, the caller writes them with `pwrite`; if the space cannot be
    /// allocated, `mapped` is turned off.
    fn write_mapped(&mut self, off: u64, bytes: &[u8], mapped: &AtomicBool) -> Result<bool> {
        let end = off + bytes.len() as u64;
        if self.write.as_ref().is_none_or(|m| !m.covers(off, end)) {
            self.write = None;
            let file = self.file()?;
            // From the 2 MiB boundary below the append to the space reserved: appends go on
            // from there until the log grows again.
            let start = off - off % map::HUGE_PAGE;
            // Space another process reserved may be sparse (its file system call failed, say):
            // everything mapped for writing must be allocated.
            if let Err(e) = sys::allocate(file, start, self.len.saturating_sub(start)) {
                log::debug!("{}: appends use pwrite ({e})", self.path.display());
                mapped.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            let map =
                WriteMap::new(file, start, self.len).ctx("map segment for writing", &self.path)?;
            self.write = Some(map);
        }
        Ok(self.write.as_ref().is_some_and(|m| m.write(off, bytes)))
    }

    /// Makes what was written durable (nothing to do if the log does not exist).
    pub(super) fn sync(&self) -> Result<()> {
        match &self.file {
            Some(file) => files::sync_file(file, true).ctx("sync segment", &self.path),
            None => Ok(()),
        }
    }

    /// Gives back the space reserved past `keep` (`what` names the step in an error). Only
    /// ever shrinks the file: a length others reserved below `keep` stays.
    pub(super) fn shrink_to(&self, keep: u64, what: &'static str) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let len = file.metadata().ctx("stat segment", &self.path)?.len();
        if keep < len {
            file.set_len(keep).ctx(what, &self.path)?;
        }
        Ok(())
    }
}

/// The whole file as it is now, mapped with nothing visible, and its length: `map_segment`
/// clamps the mapping to the length on disk, so one `fstat` gives both.
fn map_whole(file: &File, path: &Path) -> Result<(Arc<ReadMap>, u64)> {
    let map = segment::map_segment(file, path, u64::MAX)?;
    let len = map.mapped_len() as u64;
    Ok((Arc::new(map.hidden()), len))
}
