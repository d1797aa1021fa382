//! Every `unsafe` block of the crate lives here: file mappings (read-only ones for lookups, a
//! writable one for the writer's appends), the atomics of the shared control page, the unchecked
//! rkyv access after validation, the `&[u8]` to `&[u32]` view, and the few libc calls std lacks.
//!
//! The contract these blocks rely on is the one the whole crate keeps: a file of ours is never
//! truncated or rewritten in place below a length any process has been told about. Segments only
//! grow and are replaced by new files; indexes are written once and renamed into place.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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

/// Allocates disk blocks for `offset..offset + len` of `file` (growing it if needed), so that
/// writes there through a mapping cannot fail for lack of space.
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for `file`'s
    // lifetime.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives the blocks of `file`'s first `len` bytes back to the file system, keeping its size
/// (reads of that range then see zeros): the blocks of a deleted segment that some process
/// still has mapped are freed at once rather than when it unmaps it.
pub(crate) fn punch_hole(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = i64::try_from(len) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: as for `allocate`.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the file system of `file` is one where writes through a mapping into space that
/// [`allocate`] reserved cannot fail with `SIGBUS` on a full disk: ext4, XFS and tmpfs. On
/// copy-on-write file systems (btrfs, ZFS) and network ones a mapped write may need new space,
/// so appends there use `pwrite`, which reports a full disk as an error.
pub(crate) fn mapped_writes_are_safe(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    // SAFETY: `statfs` is plain old data, zeroed is a valid value; fstatfs only writes it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open and `st` is a valid, writable statfs owned by this frame.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    rc == 0 && matches!(kind, EXT4 | XFS | TMPFS)
}

/// Sleeps while `word` holds `expected`, for at most `timeout`, or until [`futex_wake`]. The
/// futex is not private: `word` lives in a shared file mapping and other processes wake it.
/// Returns early (spuriously, or because the value changed) without telling why; callers
/// re-check the word.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word` (alive for the call) and `ts`, a
    // valid timespec owned by this frame; the remaining arguments are unused.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes one process sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key; it reads no other memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1u32);
    }
}

fn byte_lock(kind: libc::c_short, byte: u64) -> io::Result<libc::flock> {
    // SAFETY: `flock` is plain old data; zeroed is a valid value (l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = libc::off_t::try_from(byte).map_err(|_| io::ErrorKind::InvalidInput)?;
    fl.l_len = 1;
    Ok(fl)
}

/// Takes an open-file-description write lock on byte `byte` of `file`, held until the file is
/// closed (by the kernel, when the process dies). `Ok(false)`: another holds it.
pub(crate) fn lock_byte(file: &File, byte: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fl = byte_lock(libc::F_WRLCK as libc::c_short, byte)?;
    // SAFETY: F_OFD_SETLK reads the valid `flock` owned by this frame.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another open file description holds a lock on byte `byte` of `file`.
pub(crate) fn byte_is_locked(file: &File, byte: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fl = byte_lock(libc::F_WRLCK as libc::c_short, byte)?;
    // SAFETY: F_OFD_GETLK reads and writes the valid `flock` owned by this frame.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Registers `child` to run in the child process after every `fork()` (`pthread_atfork`).
/// `child` must be async-signal-safe: it runs before the child returns from `fork`.
pub(crate) fn on_fork_child(child: extern "C" fn()) -> io::Result<()> {
    // SAFETY: only the child handler is registered, a function that lives for the whole
    // program; the caller promises it is async-signal-safe.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(child)) };
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Makes each descriptor of `fds` (in this process) refer to `/dev/null` instead of its open
/// file description: the locks held through that description are no longer held by this
/// process's references, and are not released either (the other processes that share the
/// description keep them). Async-signal-safe: `open`, `dup2` and `close` only.
pub(crate) fn detach_fds(fds: impl Iterator<Item = i32>) {
    // SAFETY: the path is a NUL-terminated static string; `open` reads nothing else.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    for fd in fds {
        if null < 0 {
            // SAFETY: closing a descriptor number is defined whatever it refers to; the
            // `File` that owns it is never used or dropped in this process (see fork.rs).
            unsafe { libc::close(fd) };
        } else {
            // SAFETY: as above; `dup2` keeps the number valid, pointing at /dev/null, with
            // O_CLOEXEC set again (dup2 clears it, and the original had it).
            unsafe {
                libc::dup2(null, fd);
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    if null >= 0 {
        // SAFETY: `null` was opened above and is closed once.
        unsafe { libc::close(null) };
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

/// Seconds since the Unix epoch from `CLOCK_REALTIME_COARSE` (a few ms resolution, a few ns to
/// read), or `None` if the kernel refuses it.
pub(crate) fn coarse_realtime() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Asks the CPU to start loading the cache line that holds `r`, without waiting for it: a batch
/// of lookups issues its reads of the shared map together so that their misses overlap.
#[inline]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect (it loads nothing into a register and
    // faults on no address), and `r` is a valid reference anyway; SSE is part of the x86_64
    // baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(r).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Ends this process at once with SIGKILL, as the OOM killer would: no destructor, no flush,
/// no exit handler runs (the tests' kill points, `killpoint.rs`).
#[cfg(feature = "killpoints")]
pub(crate) fn kill_self() -> ! {
    // SAFETY: `kill` and `getpid` take no pointers; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL to oneself is delivered before `kill` returns; should it not be, nothing goes on.
    std::process::abort()
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
        allocate(&file, 0, end).unwrap();
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
