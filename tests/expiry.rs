//! Expired entries give their space back by themselves: every quarter of the TTL one routine
//! compaction in the pool drops them and reclaims their segments, and a process that opens
//! the cache when a pass is due starts one, without anyone calling `clear_expired`.

use std::sync::Arc;
use std::time::Duration;

use tokcache::{Cache, ManualClock};

const HOUR: f64 = 3600.0;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Cache {
    Cache::builder(dir)
        .ttl(Duration::from_secs(3600))
        .compact_after_records(100)
        .rewrite_segments_with_dead_bytes(4096)
        .clock(Arc::clone(clock) as Arc<dyn tokcache::Clock>)
        .open()
        .unwrap()
}

fn key(round: u32, i: u32) -> String {
    format!(
        "tokenizer:cl100k_base:round {round} message {i} {}",
        "x".repeat(200)
    )
}

#[test]
fn writes_reclaim_expired_space_every_quarter_of_the_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1.9e9));
    let cache = open(tmp.path(), &clock);
    for i in 0..2000 {
        cache.set("token_count", &key(0, i), &u64::from(i)).unwrap();
    }
    let full = cache.get_stats();
    assert_eq!(full.disk_files, 2000);
    // An hour and a half later every entry has expired; writing goes on.
    clock.advance(1.5 * HOUR);
    for i in 0..500 {
        cache.set("token_count", &key(1, i), &u64::from(i)).unwrap();
    }
    cache.flush().unwrap();
    drop(cache); // waits for the compaction thread
    let cache = open(tmp.path(), &clock);
    let s = cache.get_stats();
    assert_eq!(
        s.disk_files, 500,
        "the 2000 expired entries are gone: {s:?}"
    );
    assert!(
        s.segment_bytes * 3 < full.segment_bytes,
        "their space came back: {} of {} bytes",
        s.segment_bytes,
        full.segment_bytes
    );
    let pool = cache.pool_stats().unwrap().totals;
    assert_eq!(pool.expired, 2000, "{pool:?}");
    for i in 0..500 {
        assert_eq!(
            cache.get::<u64>("token_count", &key(1, i)),
            Some(u64::from(i))
        );
    }
    assert_eq!(cache.get::<u64>("token_count", &key(0, 7)), None);
    assert!(cache.verify(|_| {}).is_sound());
}

#[test]
fn entries_younger_than_the_ttl_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1.9e9));
    let cache = open(tmp.path(), &clock);
    for i in 0..300 {
        cache.set("token_count", &key(0, i), &u64::from(i)).unwrap();
    }
    // 20 minutes later a pass is due (every 15 minutes), but nothing has expired.
    clock.advance(20.0 * 60.0);
    for i in 0..300 {
        cache.set("token_count", &key(1, i), &u64::from(i)).unwrap();
    }
    drop(cache);
    let cache = open(tmp.path(), &clock);
    assert_eq!(
        cache.get_stats().disk_files,
        600,
        "nothing has expired in 20 minutes"
    );
    assert_eq!(cache.pool_stats().unwrap().totals.expired, 0);
}

#[test]
fn opening_a_cache_whose_entries_expired_reclaims_them() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1.9e9));
    let cache = open(tmp.path(), &clock);
    for i in 0..1000 {
        cache.set("token_count", &key(0, i), &u64::from(i)).unwrap();
    }
    cache.flush().unwrap();
    drop(cache);
    // A day later a process starts: the original promised "expired files automatically
    // removed" at start-up. The open starts the pass on the process's compaction thread.
    clock.advance(24.0 * HOUR);
    let cache = open(tmp.path(), &clock);
    drop(cache); // waits for that thread
    let cache = open(tmp.path(), &clock);
    let s = cache.get_stats();
    assert_eq!(s.disk_files, 0, "{s:?}");
    assert_eq!(cache.pool_stats().unwrap().totals.expired, 1000);
}

#[test]
fn a_cache_that_never_compacted_is_reclaimed_at_start_up_too() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1.9e9));
    // Ten entries: far below the compaction threshold, so only `open` ever looked at the
    // time of the last expiry pass.
    let cache = open(tmp.path(), &clock);
    for i in 0..10 {
        cache.set("token_count", &key(0, i), &u64::from(i)).unwrap();
    }
    assert_eq!(cache.get_stats().index_generation, 0);
    drop(cache);
    clock.advance(24.0 * HOUR);
    drop(open(tmp.path(), &clock)); // starts the pass; dropping waits for it
    let cache = open(tmp.path(), &clock);
    assert_eq!(cache.get_stats().disk_files, 0);
    assert_eq!(cache.pool_stats().unwrap().totals.expired, 10);
}
