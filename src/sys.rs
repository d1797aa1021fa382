//! The system calls std lacks, each behind a safe function: space allocation and hole
//! punching, the file system's kind, futexes, open-file-description byte locks, the fork
//! handler and descriptor detaching, the coarse clock, prefetching, and the tests' `SIGKILL`.
//! With `map.rs`, the only places of the crate with `unsafe` blocks.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

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
