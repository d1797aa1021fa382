//! 8 processes with 3 threads each: mixed get/set/remove on overlapping keys, with compaction
//! and clear_expired running while the others read. Zero wrong values, zero lost flushed writes.

mod common;

use std::sync::Arc;

use common::{Rng, child_spec, expect_success, spawn_child, value_of};
use tokcache::Cache;

const PROCESSES: u64 = 8;
const THREADS: u64 = 3;
const OPS: u64 = 1500;
const SHARED: u64 = 200;

fn shared_key(i: u64) -> String {
    format!("shared {i} {}", "s".repeat((i % 13) as usize * 40))
}

fn own_key(p: u64, t: u64, i: u64) -> String {
    format!("own {p}/{t}/{i}")
}

fn open(dir: &str) -> Cache {
    Cache::builder(dir)
        .max_ram_entries(50)
        .compact_after_records(500)
        .rewrite_segments_with_dead_bytes(8192)
        .open()
        .unwrap()
}

#[test]
#[ignore = "entry point of the worker processes"]
fn mixed_worker() {
    let spec = child_spec("TOKCACHE_MIXED");
    let (dir, p) = spec.split_once('|').unwrap();
    let p: u64 = p.parse().unwrap();
    let cache = Arc::new(open(dir));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                let mut rng = Rng(p * 1000 + t + 1);
                let mut wrong = 0u64;
                for i in 0..OPS {
                    let own = own_key(p, t, i);
                    cache.set("test", &own, &value_of(&own)).unwrap();
                    let s = shared_key(rng.below(SHARED));
                    match rng.below(10) {
                        0..=3 => cache.set("test", &s, &value_of(&s)).unwrap(),
                        4 => {
                            cache.remove("test", &s).unwrap();
                        }
                        5 if t == 0 && i % 300 == 0 => {
                            cache.compact().unwrap();
                        }
                        6 if t == 1 && i % 400 == 0 => {
                            cache.clear_expired().unwrap();
                        }
                        _ => {}
                    }
                    for k in [
                        s,
                        own_key(rng.below(PROCESSES), rng.below(THREADS), rng.below(i + 1)),
                    ] {
                        if let Some(v) = cache.get::<u64>("test", &k) {
                            wrong += u64::from(v != value_of(&k));
                        }
                    }
                    if i % 50 == 0 {
                        // A batch of shared and own keys, through `get_many`.
                        let keys: Vec<String> = (0..20)
                            .map(|j| match j % 2 {
                                0 => shared_key(rng.below(SHARED)),
                                _ => own_key(
                                    rng.below(PROCESSES),
                                    rng.below(THREADS),
                                    rng.below(i + 1),
                                ),
                            })
                            .collect();
                        let got = cache.get_many::<u64>("test", &keys);
                        for (k, v) in keys.iter().zip(got) {
                            wrong += u64::from(v.is_some_and(|v| v != value_of(k)));
                        }
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    cache.flush().unwrap();
    println!("{wrong}");
    assert_eq!(wrong, 0, "process {p} read {wrong} wrong values");
}

#[test]
fn eight_processes_three_threads_mixed_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| spawn_child("mixed_worker", "TOKCACHE_MIXED", &format!("{dir}|{p}")))
        .collect();
    for c in children {
        expect_success(c);
    }
    let cache = open(&dir);
    for p in 0..PROCESSES {
        for t in 0..THREADS {
            for i in 0..OPS {
                let k = own_key(p, t, i);
                assert_eq!(
                    cache.get::<u64>("test", &k),
                    Some(value_of(&k)),
                    "lost flushed write {k}"
                );
            }
        }
    }
    for i in 0..SHARED {
        let k = shared_key(i);
        if let Some(v) = cache.get::<u64>("test", &k) {
            assert_eq!(v, value_of(&k));
        }
    }
    // About 54,000 records at 500 per compaction; compaction does not hold the writers back, so
    // each one merges what was appended while it ran too, and there are fewer, larger ones.
    let s = cache.get_stats();
    assert!(
        s.index_generation >= 5,
        "too few compactions ran while the workers worked: {s:?}"
    );
    let report = cache.verify(|_| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn readers_keep_reading_through_compaction_and_clear_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let writer = open(&dir);
    for i in 0..2000u64 {
        let k = own_key(0, 0, i);
        writer.set("test", &k, &value_of(&k)).unwrap();
    }
    let reader = Arc::new(open(&dir));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (reader, stop) = (Arc::clone(&reader), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut rng = Rng(r + 5);
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = own_key(0, 0, rng.below(2000));
                    assert_eq!(reader.get::<u64>("test", &k), Some(value_of(&k)));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..20 {
        writer.compact().unwrap();
        writer.clear_expired().unwrap();
        let k = own_key(0, 0, round);
        writer.set("test", &k, &value_of(&k)).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 100);
    assert!(reader.get_stats().index_generation >= 40);
}

#[test]
fn threads_of_one_process_never_lose_writes() {
    // Readers that reload the view after other threads' compactions must never hand a stale
    // view to a writer (which would then append over published records).
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        Cache::builder(tmp.path())
            .max_ram_entries(0)
            .compact_after_records(40)
            .rewrite_segments_with_dead_bytes(0)
            .open()
            .unwrap(),
    );
    let other = Arc::new(open(tmp.path().to_str().unwrap()));
    let workers: Vec<_> = (0..6u64)
        .map(|t| {
            let (cache, other) = (Arc::clone(&cache), Arc::clone(&other));
            std::thread::spawn(move || {
                let mut rng = Rng(t + 11);
                for i in 0..1500u64 {
                    if t % 2 == 0 {
                        let k = own_key(0, t, i);
                        cache.set("test", &k, &value_of(&k)).unwrap();
                    } else {
                        let k = own_key(0, t - 1, rng.below(i + 1));
                        if let Some(v) = cache.get::<u64>("test", &k) {
                            assert_eq!(v, value_of(&k));
                        }
                        let k2 = own_key(1, t, i);
                        other.set("test", &k2, &value_of(&k2)).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let fresh = open(tmp.path().to_str().unwrap());
    for t in 0..6u64 {
        for i in 0..1500u64 {
            let k = if t % 2 == 0 {
                own_key(0, t, i)
            } else {
                own_key(1, t, i)
            };
            assert_eq!(fresh.get::<u64>("test", &k), Some(value_of(&k)), "lost {k}");
        }
    }
}

#[test]
fn threads_setting_one_key_leave_ram_and_disk_agreeing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(tmp.path()).unwrap());
    for round in 0..200u64 {
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    cache.set("test", "contended", &(round * 2 + t)).unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let on_disk = Cache::builder(tmp.path())
            .max_ram_entries(0)
            .open()
            .unwrap()
            .get::<u64>("test", "contended");
        assert_eq!(
            cache.get::<u64>("test", "contended"),
            on_disk,
            "round {round}: RAM tier disagrees with disk"
        );
    }
}
