//! Real processes sharing one cache directory. The workers are this test binary re-run with
//! `TOKCACHE_WORKER` set, entering through the ignored `worker` test.

use std::process::Command;

mod common;

use common::{child_spec, expect_success, spawn_child, spawn_child_with, value_of};
use tokcache::Cache;

const WORKERS: usize = 4;
const KEYS: usize = 300;

fn open(dir: &str) -> Cache {
    Cache::builder(dir)
        .max_ram_entries(64)
        .compact_after_records(200)
        .rewrite_segments_with_dead_bytes(0)
        .open()
        .unwrap()
}

/// A prefix of worker `me`, a new one every 5 keys.
fn worker_prefix(me: usize, i: usize) -> String {
    format!("w{me}-p{}", i / 5)
}

/// Worker body: writes its own keys and the shared keys, reads everything it can, and exits
/// non-zero on any wrong value.
#[test]
#[ignore = "entry point of the worker processes of this file"]
fn worker() {
    let spec = child_spec("TOKCACHE_WORKER");
    let (dir, me) = spec.split_once('|').unwrap();
    let me: usize = me.parse().unwrap();
    let cache = open(dir);
    let mut wrong = 0;
    for i in 0..KEYS {
        let own = format!("own-{me}-{i}");
        cache.set("test", &own, &value_of(&own)).unwrap();
        // Prefixes new to the cache, added by the workers at the same time: each must get a
        // number of its own (a shared number would show as another worker's value).
        let mine = worker_prefix(me, i);
        cache.set(&mine, &own, &value_of(&mine)).unwrap();
        if i > 0 {
            let other = worker_prefix((me + 1) % WORKERS, i - 1);
            let k = format!("own-{}-{}", (me + 1) % WORKERS, i - 1);
            if let Some(v) = cache.get::<u64>(&other, &k) {
                wrong += usize::from(v != value_of(&other));
            }
        }
        let shared = format!("shared-{}", (i * 7 + me) % KEYS);
        cache.set("test", &shared, &value_of(&shared)).unwrap();
        if i % 3 == me % 3 {
            cache
                .remove("test", &format!("shared-{}", (i * 13) % KEYS))
                .unwrap();
        }
        for other in 0..WORKERS {
            let k = format!("own-{other}-{}", i / 2);
            if let Some(v) = cache.get::<u64>("test", &k) {
                wrong += usize::from(v != value_of(&k));
            }
            let k = format!("shared-{}", (i + other) % KEYS);
            if let Some(v) = cache.get::<u64>("test", &k) {
                wrong += usize::from(v != value_of(&k));
            }
        }
    }
    cache.flush().unwrap();
    assert_eq!(wrong, 0, "worker {me} read {wrong} wrong values");
}

#[test]
fn four_processes_write_and_read_overlapping_keys() {
    four_processes(&["mapped"; WORKERS]);
}

#[test]
fn processes_appending_with_pwrite_and_through_the_map_agree() {
    // `TOKCACHE_APPEND=pwrite` forces the append path used on file systems where mapped writes
    // are not safe; both paths on one directory at once.
    four_processes(&["pwrite", "mapped", "pwrite", "mapped"]);
}

fn four_processes(append: &[&str; WORKERS]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let children: Vec<_> = (0..WORKERS)
        .map(|me| {
            let spec = format!("{dir}|{me}");
            spawn_child_with(
                "worker",
                &[("TOKCACHE_WORKER", &spec), ("TOKCACHE_APPEND", append[me])],
            )
        })
        .collect();
    for c in children {
        expect_success(c);
    }
    let cache = open(&dir);
    for me in 0..WORKERS {
        for i in 0..KEYS {
            let k = format!("own-{me}-{i}");
            assert_eq!(
                cache.get::<u64>("test", &k),
                Some(value_of(&k)),
                "lost write {k}"
            );
            let p = worker_prefix(me, i);
            assert_eq!(cache.get::<u64>(&p, &k), Some(value_of(&p)), "{p} {k}");
        }
    }
    // 4 x 60 prefixes and `test`: 241 numbers, each given once.
    let table = std::fs::read(std::path::Path::new(&dir).join("prefixes.tkp")).unwrap();
    for me in 0..WORKERS {
        for n in 0..KEYS / 5 {
            let entry = format!("w{me}-p{n}");
            let framed: Vec<u8> = [&[entry.len() as u8][..], entry.as_bytes()].concat();
            let times = table.windows(framed.len()).filter(|w| *w == framed).count();
            assert_eq!(times, 1, "{entry} is in the prefix table {times} times");
        }
    }
    for i in 0..KEYS {
        let k = format!("shared-{i}");
        if let Some(v) = cache.get::<u64>("test", &k) {
            assert_eq!(v, value_of(&k));
        }
    }
    let report = cache.verify(|_| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        cache.get_stats().index_generation > 0,
        "compaction ran while workers wrote"
    );
}

#[test]
fn overwrite_and_remove_are_seen_by_another_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let a = Cache::open(dir).unwrap();
    let b = Cache::open(dir).unwrap();
    a.set("test", "k", &1u64).unwrap();
    assert_eq!(b.get::<u64>("test", "k"), Some(1));
    a.set("test", "k", &2u64).unwrap();
    assert_eq!(
        b.get::<u64>("test", "k"),
        Some(2),
        "RAM tier of b was invalidated"
    );
    a.remove("test", "k").unwrap();
    assert_eq!(b.get::<u64>("test", "k"), None);
    a.set("test", "k", &3u64).unwrap();
    a.compact().unwrap();
    assert_eq!(b.get::<u64>("test", "k"), Some(3));
    b.clear_all().unwrap();
    assert_eq!(a.get::<u64>("test", "k"), None);

    // And across a real process boundary: a child process reads what this one wrote.
    a.set("test", "own-9-1", &value_of("own-9-1")).unwrap();
    a.flush().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "reader",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TOKCACHE_READER", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        a.get::<u64>("test", "own-9-1"),
        None,
        "the child removed it"
    );
}

#[test]
#[ignore = "entry point of a reader process"]
fn reader() {
    let dir = child_spec("TOKCACHE_READER");
    let c = Cache::open(dir).unwrap();
    assert_eq!(c.get::<u64>("test", "own-9-1"), Some(value_of("own-9-1")));
    assert!(c.remove("test", "own-9-1").unwrap());
}

#[test]
#[ignore = "entry point of the processes racing to create a cache"]
fn racer() {
    let spec = child_spec("TOKCACHE_RACER");
    let (dir, me) = spec.split_once('|').unwrap();
    let cache = Cache::open(dir).unwrap();
    for i in 0..20 {
        let k = format!("racer-{me}-{i}");
        cache.set("test", &k, &value_of(&k)).unwrap();
    }
    cache.flush().unwrap();
}

#[test]
fn processes_racing_to_create_a_fresh_directory_lose_nothing() {
    // Regression: a process that mapped the first index before its segment existed appended at
    // offset 0, over the creator's records.
    for round in 0..12 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let dir = dir.to_str().unwrap();
        let racers: Vec<_> = (0..4)
            .map(|me| spawn_child("racer", "TOKCACHE_RACER", &format!("{dir}|{me}")))
            .collect();
        for r in racers {
            expect_success(r);
        }
        let cache = Cache::open(dir).unwrap();
        for me in 0..4 {
            for i in 0..20 {
                let k = format!("racer-{me}-{i}");
                assert_eq!(
                    cache.get::<u64>("test", &k),
                    Some(value_of(&k)),
                    "round {round}: lost {k}"
                );
            }
        }
    }
}

#[test]
#[ignore = "entry point of a process that changes one key, then compacts"]
fn compactor() {
    let spec = child_spec("TOKCACHE_COMPACTOR");
    let (dir, round) = spec.split_once('|').unwrap();
    let cache = Cache::open(dir).unwrap();
    cache
        .set("test", "hot-7", &format!("changed in round {round}"))
        .unwrap();
    cache.remove("test", "hot-8").unwrap();
    for i in 0..50 {
        cache
            .set("test", &format!("other-{round}-{i}"), &i)
            .unwrap();
    }
    // Round 1 seals the log (clear_expired does), so that hot-9 goes to a new log; the other
    // rounds keep it going.
    if round == "1" {
        cache.clear_expired().unwrap();
    } else {
        cache.compact().unwrap();
    }
    cache
        .set("test", "hot-9", &format!("after compaction {round}"))
        .unwrap();
}

#[test]
fn ram_tier_survives_another_process_compacting_and_misses_nothing_it_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let cache = Cache::builder(dir).max_ram_entries(1000).open().unwrap();
    for round in 0..3 {
        for i in 0..100 {
            cache
                .set("test", &format!("hot-{i}"), &format!("v{i}"))
                .unwrap();
        }
        let hits_before = cache.get_stats().ram_hits;
        expect_success(spawn_child(
            "compactor",
            "TOKCACHE_COMPACTOR",
            &format!("{dir}|{round}"),
        ));
        for i in 0..100 {
            let got = cache.get::<String>("test", &format!("hot-{i}"));
            let want = match i {
                7 => Some(format!("changed in round {round}")),
                8 => None,
                9 => Some(format!("after compaction {round}")),
                _ => Some(format!("v{i}")),
            };
            assert_eq!(got, want, "round {round}, key hot-{i}");
        }
        // The 97 keys nobody changed are still in the RAM tier after the new generation.
        let hits = cache.get_stats().ram_hits - hits_before;
        assert!(hits >= 97, "round {round}: only {hits} RAM hits");
        assert!(cache.get_stats().index_generation > 0);
    }
}
