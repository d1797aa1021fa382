//! File mappings (read-only ones for lookups, a writable one for the writer's appends), the
//! atomics of the shared control page and statistics, the unchecked rkyv access after
//! validation and the `&[u8]` to `&[u32]` view: with `sys.rs` (the system calls std lacks), the
//! only places of the crate with `unsafe` blocks.
//!
//! The contract these blocks rely on is the one the whole crate keeps: a file of ours is never
//! truncated or rewritten in place below a length any process has been told about. Segments only
//! grow and are replaced by new files; indexes are written once and renamed into place.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use memmap2::{Advice, Mmap, MmapOptions, MmapRaw};

/// The large page size (x86-64's 2 MiB) that mappings, logs and the writer's mapping of the
/// log's end are sized and aligned to.
pub(crate) const HUGE_PAGE: u64 = 2 << 20;

/// Asks the kernel to back a mapping of at least 2 MiB with 2 MiB pages where it can: the page
/// cache then reads and keeps its file in 2 MiB folios, which every process maps with one page
/// table entry each. A lookup's random reads then miss the TLB far less, and a fresh process
/// takes one page fault per 2 MiB instead of per 4-64 KiB (docs/performance.md). The data and
/// the files are the same either way; a kernel or file system without large folios ignores it.
fn prefer_huge_pages(len: usize, advise: impl FnOnce() -> io::Result<()>) {
    if len >= HUGE_PAGE as usize
        && let Err(e) = advise()
    {
        log::debug!("madvise(MADV_HUGEPAGE): {e}");
    }
}

/// A read-only shared mapping of the first `len` bytes of a file, of which the first
/// `visible` can be borrowed as `&[u8]`. A log is mapped with the space reserved past its
/// committed length, which this process's writer fills through a [`WriteMap`] while lookups
/// run: only the committed part, whose bytes never change again, is ever made visible.
#[derive(Debug)]
pub(crate) struct ReadMap {
    map: Option<Arc<Mmap>>,
    /// The mapping's address, kept here so that borrowing its bytes is no pointer chase.
    addr: usize,
    /// How many of its first bytes may be borrowed; only ever grows ([`ReadMap::show`]).
    visible: AtomicUsize,
}

impl ReadMap {
    /// Maps `len` bytes of `file`, all visible. The caller has checked that the file is at
    /// least `len` long; the crate never shrinks such a file afterwards (module docs).
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        // SAFETY: the mapping is read-only and covers bytes that exist in the file now. Our files
        // are append-only or immutable, so those bytes are never truncated away by this crate
        // while mapped; another program doing so is the documented mmap hazard. Which of them
        // may be borrowed is `visible`'s business (`bytes`).
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        prefer_huge_pages(len, || map.advise(Advice::HugePage));
        Ok(Self {
            addr: map.as_ptr() as usize,
            map: Some(Arc::new(map)),
            visible: AtomicUsize::new(len),
        })
    }

    pub(crate) fn empty() -> Self {
        Self {
            map: None,
            addr: 0,
            visible: AtomicUsize::new(0),
        }
    }

    /// This mapping with nothing visible: a log's, whose committed part [`ReadMap::show`]
    /// then makes visible (past it, this process's writer may be writing).
    pub(crate) fn hidden(self) -> Self {
        Self {
            visible: AtomicUsize::new(0),
            ..self
        }
    }

    /// Makes the first `len` bytes visible (at most what is mapped), if fewer were: a log's
    /// records as they are committed. Never hides what was visible (a borrowed slice may cover
    /// it); committed records never change.
    pub(crate) fn show(&self, len: u64) {
        // Only the view that owns this map calls it (under its write lock): no read-modify-write
        // is needed, only never going back.
        if (self.visible.load(Ordering::Relaxed) as u64) < len {
            let len = usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(self.mapped_len());
            self.visible.store(len, Ordering::Relaxed);
        }
    }

    /// Bytes mapped, visible or not.
    pub(crate) fn mapped_len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// The visible bytes.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // Relaxed: it grows under the view's write lock, which a reader's guard orders after.
        let visible = self.visible.load(Ordering::Relaxed);
        if visible == 0 {
            return &[];
        }
        // SAFETY: `addr` is the start of the mapping `self.map` keeps alive, and
        // `visible <= its length` (`new`, `empty`, `hidden` and `show` ensure it), so the slice
        // lies in it. Those bytes are published records or immutable files: nothing writes
        // them while borrowed (the writer writes past the committed length, never visible;
        // module docs).
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, visible) }
    }
}

/// A writable shared mapping of the active segment, through which the writer (holding the
/// write lock) copies records past the committed length. It is a separate mapping from the
/// read-only ones, and no `&[u8]` of this process ever covers the bytes written through it
/// ([`ReadMap::bytes`] stops at the committed length), just as with `pwrite`. Only space that [`allocate`] reserved is mapped, so a full disk is an
/// error from `allocate`, never a `SIGBUS` on a write.
#[derive(Debug)]
pub(crate) struct WriteMap {
    map: MmapRaw,
    /// The file offset the mapping starts at.
    start: u64,
    /// Bytes of the mapping (from its start) whose pages were set up ahead of the writes.
    populated: AtomicU64,
}

/// How far ahead of a write [`WriteMap::write`] sets up pages: one `madvise` every 128 KiB
/// of appends (~1200 small records) instead of a page fault every 4 KiB.
const POPULATE_AHEAD: u64 = 128 << 10;

impl WriteMap {
    /// Maps bytes `start..end` of `file` (`start` a multiple of the page size): the end of a
    /// log, where appends go, not all of it (remapping a whole large log at each growth step
    /// cost milliseconds).
    pub(crate) fn new(file: &File, start: u64, end: u64) -> io::Result<Self> {
        let len = usize::try_from(end.saturating_sub(start))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let map = MmapOptions::new().offset(start).len(len).map_raw(file)?;
        prefer_huge_pages(len, || map.advise(Advice::HugePage));
        Ok(Self {
            map,
            start,
            populated: AtomicU64::new(0),
        })
    }

    /// Sets up the pages of mapping bytes `at..end` and [`POPULATE_AHEAD`] past them, unless
    /// done before: one call (`MADV_POPULATE_WRITE`, Linux 5.14) instead of a page fault in the
    /// first write to each 4 KiB (a log below 32 MiB has no 2 MiB pages: every ~40th small
    /// set took one). Only a hint: older kernels refuse it, and the writes fault as before.
    fn populate(&self, at: u64, end: u64) {
        const PAGE: u64 = 4096;
        let done = self.populated.load(Ordering::Relaxed);
        if end <= done {
            return;
        }
        let from = at.max(done) / PAGE * PAGE;
        let to = (end + POPULATE_AHEAD).min(self.map.len() as u64);
        if let (Ok(from), Ok(len)) = (usize::try_from(from), usize::try_from(to - from)) {
            let _ = self.map.advise_range(Advice::PopulateWrite, from, len);
        }
        self.populated.store(to, Ordering::Relaxed);
    }

    /// Whether the file's bytes `start..end` are inside the mapping.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        start >= self.start && end >= start && end - self.start <= self.map.len() as u64
    }

    /// Copies `bytes` to file offset `offset`; `false` (and nothing written) if they do not
    /// fit in the mapping.
    pub(crate) fn write(&self, offset: u64, bytes: &[u8]) -> bool {
        let Some(end) = offset.checked_add(bytes.len() as u64) else {
            return false;
        };
        if !self.covers(offset, end) {
            return false;
        }
        self.populate(offset - self.start, end - self.start);
        let at = (offset - self.start) as usize;
        // SAFETY: the range is inside the mapping (checked above), which lives as long as
        // `self`; `bytes` cannot overlap it (no slice of this mapping is ever handed out). The
        // caller holds the write lock and writes past the committed length, which no reader
        // reads until it is published.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at),
                bytes.len(),
            );
        }
        true
    }
}

/// The shared control page: a few `AtomicU64`s at fixed 8-aligned offsets of a mapped file.
#[derive(Debug)]
pub(crate) struct SharedPage {
    map: MmapRaw,
    writable: bool,
    /// The bytes before the first atomic: written once, when the page is made.
    header: usize,
}

impl SharedPage {
    /// Maps `len` bytes of `file`: `header` bytes of fixed fields, then the atomics.
    pub(crate) fn new(file: &File, len: usize, header: usize, writable: bool) -> io::Result<Self> {
        assert!(header <= len, "header longer than the page");
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if writable {
            options.map_raw(file)?
        } else {
            options.map_raw_read_only(file)?
        };
        Ok(Self {
            map,
            writable,
            header,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// The header: the fixed fields before the atomics (never written once the page is made).
    pub(crate) fn header(&self) -> &[u8] {
        // SAFETY: the mapping is at least `header` bytes long (asserted in `new`) and lives as
        // long as `self`; no process writes these bytes after the page is made, and the atomics
        // all lie past them (asserted in `atomic` and `atomic_u32`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.header) }
    }

    /// The atomic at byte `offset`.
    pub(crate) fn atomic(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset >= self.header && offset + 8 <= self.map.len(),
            "control field out of page"
        );
        &self.atomics(offset, 1)[0]
    }

    /// The `n` atomics from byte `offset` on.
    pub(crate) fn atomics(&self, offset: usize, n: usize) -> &[AtomicU64] {
        assert!(
            offset.is_multiple_of(8)
                && offset >= self.header
                && n.checked_mul(8)
                    .and_then(|len| offset.checked_add(len))
                    .is_some_and(|end| end <= self.map.len()),
            "control fields out of page"
        );
        // SAFETY: the page is page-aligned, `offset` is 8-aligned and the `n` words are in
        // bounds (asserted), the mapping lives as long as the returned slice, and every process
        // only touches these bytes through atomics. A read-only mapping is only ever loaded
        // from, never stored to (callers check `is_writable`), which is allowed for 8-byte
        // atomics.
        unsafe {
            std::slice::from_raw_parts(self.map.as_mut_ptr().add(offset) as *const AtomicU64, n)
        }
    }

    /// The 32-bit atomic at byte `offset` (a futex word).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset >= self.header && offset + 4 <= self.map.len(),
            "control field out of page"
        );
        // SAFETY: as for `atomic`, with 4-byte alignment and size.
        unsafe { &*(self.map.as_mut_ptr().add(offset) as *const AtomicU32) }
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.map.flush()
        } else {
            Ok(())
        }
    }
}

/// A run of `AtomicU64`s in a shared page (or in anonymous memory) that one owner indexes on a
/// hot path: one bounds check per access, no re-slicing of the page. It keeps what it points
/// into alive.
pub(crate) struct Words {
    ptr: *const AtomicU64,
    len: usize,
    _keep: WordsKeep,
}

enum WordsKeep {
    Page { _page: Arc<SharedPage> },
    Anon { _map: memmap2::MmapMut },
}

// SAFETY: `ptr` points into memory that `_keep` owns and that lives as long as `self`; it is
// only ever accessed through `&AtomicU64`, which is `Sync`.
#[allow(unsafe_code)]
unsafe impl Send for Words {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Words {}

impl Words {
    /// The `n` words from byte `offset` of `page` (checked as [`SharedPage::atomics`] checks).
    pub(crate) fn in_page(page: Arc<SharedPage>, offset: usize, n: usize) -> Self {
        let ptr = page.atomics(offset, n).as_ptr();
        Self {
            ptr,
            len: n,
            _keep: WordsKeep::Page { _page: page },
        }
    }

    /// `n` zeroed words of anonymous memory of this process.
    pub(crate) fn anonymous(n: usize) -> io::Result<Self> {
        let map = MmapOptions::new().len((n * 8).max(1)).map_anon()?;
        Ok(Self {
            ptr: map.as_ptr().cast::<AtomicU64>(),
            len: n,
            _keep: WordsKeep::Anon { _map: map },
        })
    }

    /// Word `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len, "word out of range");
        // SAFETY: `i` is in bounds (asserted); the memory is page-aligned, lives as long as
        // `self` (`_keep`), and is only accessed through atomics.
        unsafe { &*self.ptr.add(i) }
    }
}

/// Accesses an archive that `validate` has already checked once.
pub(crate) fn access_validated<T: rkyv::Portable>(bytes: &[u8]) -> &T {
    // SAFETY: callers pass only bytes that `rkyv::access::<T, _>` accepted when the index was
    // opened; the bytes are an immutable mapping that has not changed since (module docs).
    unsafe { rkyv::access_unchecked::<T>(bytes) }
}

/// Views little-endian `u32`s stored in `bytes` as `&[u32]`, if aligned and whole.
pub(crate) fn as_u32s(bytes: &[u8]) -> Option<&[u32]> {
    if !bytes.len().is_multiple_of(4) || !(bytes.as_ptr() as usize).is_multiple_of(4) {
        return None;
    }
    // SAFETY: the pointer is 4-aligned and the length a multiple of 4 (checked above); every bit
    // pattern is a valid u32; the target is little-endian (checked at compile time in lib.rs), so
    // the stored little-endian words read as their values.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u32, bytes.len() / 4) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_map_of_the_end_of_a_file_writes_at_file_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let start = HUGE_PAGE;
        let end = start + 8192;
        crate::sys::allocate(&file, 0, end).unwrap();
        let map = WriteMap::new(&file, start, end).unwrap();
        assert!(map.covers(start, end));
        assert!(!map.covers(start - 8, start + 8), "before the mapping");
        assert!(!map.covers(end - 8, end + 1), "past its end");
        assert!(map.write(start + 16, b"record"));
        assert!(!map.write(start - 4, b"record"));
        assert!(!map.write(end - 3, b"record"));
        assert!(!map.write(u64::MAX - 2, b"record"));
        drop(map);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[start as usize + 16..start as usize + 22], b"record");
        assert!(bytes[..start as usize + 16].iter().all(|&b| b == 0));
        assert!(bytes[start as usize + 22..].iter().all(|&b| b == 0));
    }
}
