//! Every `unsafe` block of the crate lives here: file mappings, the atomics of the shared control
//! page, the unchecked rkyv access after validation, and the `&[u8]` to `&[u32]` view.
//!
//! The contract these blocks rely on is the one the whole crate keeps: a file of ours is never
//! truncated or rewritten in place below a length any process has been told about. Segments only
//! grow and are replaced by new files; indexes are written once and renamed into place.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use memmap2::{Mmap, MmapOptions, MmapRaw};

/// A read-only shared mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub(crate) struct ReadMap {
    map: Option<Mmap>,
}

impl ReadMap {
    /// Maps `len` bytes of `file`. The caller has checked that the file is at least `len` long;
    /// the crate never shrinks such a file afterwards (module docs).
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the mapping is read-only and covers bytes that exist in the file now. Our files
        // are append-only or immutable, so those bytes are never truncated away or rewritten by
        // this crate while mapped; another program doing so is the documented mmap hazard.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        Ok(Self { map: Some(map) })
    }

    pub(crate) fn empty() -> Self {
        Self { map: None }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// The shared control page: a few `AtomicU64`s at fixed 8-aligned offsets of a mapped file.
#[derive(Debug)]
pub(crate) struct SharedPage {
    map: MmapRaw,
    writable: bool,
}

impl SharedPage {
    pub(crate) fn new(file: &File, len: usize, writable: bool) -> io::Result<Self> {
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if writable {
            options.map_raw(file)?
        } else {
            options.map_raw_read_only(file)?
        };
        Ok(Self { map, writable })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// The bytes of the page, for reading the immutable header fields.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`. Other processes
        // only change the atomic fields, which this slice is never used to read.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// The atomic at byte `offset`.
    pub(crate) fn atomic(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.map.len(),
            "control field out of page"
        );
        // SAFETY: the page is page-aligned, `offset` is 8-aligned and in bounds (asserted), the
        // mapping lives as long as the returned reference, and every process only touches these
        // bytes through atomics. A read-only mapping is only ever loaded from, never stored to
        // (callers check `is_writable`), which is allowed for 8-byte atomics.
        unsafe { &*(self.map.as_mut_ptr().add(offset) as *const AtomicU64) }
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.map.flush()
        } else {
            Ok(())
        }
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
