//! The disk bound (docs/format.md, "Eviction"): how much room the directory takes as the file
//! system counts it, when a compaction must evict, and which segments it evicts. What an
//! evicted segment's entries become (kept if read since, else dropped) is decided where the
//! segment is rewritten, in `generation.rs`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{Store, View};
use crate::index::SegmentInfo;
use crate::segment;

/// A log this long is sealed by the next compaction, and a new one started: only sealed
/// segments are rewritten to reclaim dead records. (Each seal leaves the records appended while
/// it ran twice on disk until the sealed log is rewritten: seals should be rare.)
pub(super) const LOG_SEALED_AT: u64 = 1 << 30;

/// Compactions evict once the directory takes this share of the bound (in 1/64ths: 98.4%)...
const HIGH_WATER: u64 = 63;
/// ...down to this share (87.5%): each eviction frees about a ninth of the bound, so
/// evictions (full merges) come no more often than every ninth of the bound written (sets
/// that evict run at 0.80-0.86x the rate of an unbounded cache: `cargo bench --bench loops
/// -- set-evict`; closer marks keep more entries but evict more often). What is written while
/// one runs goes past the high-water mark: the bound is exceeded by that, briefly.
const LOW_WATER: u64 = 56;

/// Bytes the cache's files take, as the file system counts their blocks.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub total: u64,
    /// Of each segment.
    pub segments: HashMap<u32, u64>,
}

impl Usage {
    /// The directory's cache files now (empty if it cannot be read: then nothing is evicted).
    pub(super) fn measure(dir: &std::path::Path) -> Self {
        usage(dir).map_or_else(
            |e| {
                log::warn!("cannot measure {}: {e}", dir.display());
                Self::default()
            },
            |(total, segments)| Self { total, segments },
        )
    }
}

/// Whether `name` is one of the files the cache writes (the original's entry files are not:
/// the cache never writes them, and a bound cannot make it delete them).
fn is_cache_file(name: &str) -> bool {
    name.starts_with("tokcache.")
        || name.starts_with("seg-")
        || name.starts_with("index-")
        || name.starts_with("prefixes.")
        || name == "compact.lock"
}

/// What the cache's files in `dir` take on disk.
pub(crate) fn usage(dir: &std::path::Path) -> std::io::Result<(u64, HashMap<u32, u64>)> {
    let mut total = 0;
    let mut segments = HashMap::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| is_cache_file(n)) else {
            continue;
        };
        // A file deleted meanwhile takes nothing.
        let Ok(meta) = e.metadata() else { continue };
        let bytes = meta.blocks() * 512;
        total += bytes;
        if let Some(id) = segment::parse_segment_name(name) {
            segments.insert(id, bytes);
        }
    }
    Ok((total, segments))
}

impl Store {
    /// The bound's share `sixty_fourths / 64`.
    fn share_of_bound(&self, sixty_fourths: u64) -> Option<u64> {
        self.disk_bound().map(|b| b / 64 * sixty_fourths)
    }

    /// The log is sealed (becomes a segment eviction can take) at this length: an eighth of the
    /// bound (eviction takes whole segments), at least 1 MiB, at most 1 GiB. (A sixteenth
    /// lowered the peaks over the bound a little more, but cost up to 0.8 points of hit ratio:
    /// docs/performance.md, "The disk bound".)
    pub(super) fn seal_at(&self) -> u64 {
        self.share_of_bound(8)
            .map_or(LOG_SEALED_AT, |n| n.clamp(1 << 20, LOG_SEALED_AT))
    }

    /// A compaction starts when the tail has this many bytes: the builder's setting, at most a
    /// thirty-second of the bound (a bounded cache checks its room that often: the directory
    /// goes past the high-water mark by at most that much, and by half as much again while a
    /// compaction runs, before writers wait for it).
    pub(super) fn compact_bytes(&self) -> u64 {
        let n = self.opts.compact_bytes;
        self.share_of_bound(2).map_or(n, |b| n.min(b.max(64 << 10)))
    }

    /// Dead bytes that make a segment worth rewriting: the builder's setting, at most a
    /// sixteenth of the bound.
    pub(super) fn gc_min_dead(&self) -> u64 {
        let n = self.opts.gc_min_dead;
        self.share_of_bound(4).map_or(n, |b| n.min(b))
    }

    /// With the directory over the high-water mark of its bound: how many bytes to free to
    /// come down to the low-water mark. `usage` is the directory as measured for this plan;
    /// segments that `v`'s generation no longer names (deleted a few milliseconds after it
    /// was published) do not count: they are going already.
    pub(super) fn eviction_due(&self, v: &View, usage: &Usage) -> Option<u64> {
        let (high, low) = (
            self.share_of_bound(HIGH_WATER)?,
            self.share_of_bound(LOW_WATER)?,
        );
        let going: u64 = usage
            .segments
            .iter()
            .filter(|&(&id, _)| id != v.active && !v.infos.iter().any(|s| s.id == id))
            .map(|(_, &bytes)| bytes)
            .sum();
        let total = usage.total.saturating_sub(going);
        (total >= high).then(|| total - low)
    }
}

/// The segments to evict to free `to_free` bytes: the oldest (lowest ids: ids grow with age,
/// and a segment of entries kept by an earlier eviction takes an id above every other sealed
/// one) of those the next generation keeps, never the log. Segments it drops anyway count
/// first.
pub(super) fn victims(
    infos: &[SegmentInfo],
    log: u32,
    usage: &Usage,
    to_free: u64,
    needed: impl Fn(&SegmentInfo) -> bool,
) -> HashSet<u32> {
    let size = |s: &SegmentInfo| usage.segments.get(&s.id).copied().unwrap_or(0);
    let mut freed: u64 = infos.iter().filter(|s| !needed(s)).map(size).sum();
    let mut candidates: Vec<&SegmentInfo> =
        infos.iter().filter(|s| s.id != log && needed(s)).collect();
    candidates.sort_unstable_by_key(|s| s.id);
    let mut out = HashSet::new();
    for s in candidates {
        if freed >= to_free {
            break;
        }
        freed += size(s);
        out.insert(s.id);
    }
    out
}
