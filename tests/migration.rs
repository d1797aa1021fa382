//! A directory of the original's `{prefix}_{md5}.json` files upgraded while a pool starts on
//! it, and with the migrating process killed at random points. Workers are this test binary
//! re-run with `TOKCACHE_MIGRATION` set (the ignored `worker` test).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Rng, child_spec, expect_success, spawn_child};
use tokcache::Cache;

const PREFIX: &str = "token_count";
const MARKER: &str = "tokcache.migrating";

fn key(j: u64) -> String {
    format!("tokenizer:cl100k_base:message {j}")
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Writes `n` entry files as the original did, value `j` for key `j`, a minute old.
fn write_original_files(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let ts = now() - 60.0;
    for j in 0..n {
        let k = key(j);
        let body = format!(
            r#"{{"key":{},"value":{j},"timestamp":{ts:?},"prefix":"{PREFIX}"}}"#,
            serde_json::to_string(&k).unwrap()
        );
        let name = format!("{}.json", tokcache::logical_name(PREFIX, &k));
        std::fs::write(dir.join(name), body).unwrap();
    }
}

/// Removes the cache's own files, keeping the original's (a directory never upgraded).
fn remove_cache_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if !tokcache::original::is_file_name(&name) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

/// Worker entry: `pool|dir|me` sets the keys `me, me + 8, ...` below `set` and reads them
/// back; `migrate|dir` only opens the cache (migrating); `set|dir|round` sets and removes
/// that round's keys.
#[test]
#[ignore = "entry point of the worker processes of this file"]
fn worker() {
    let spec = child_spec("TOKCACHE_MIGRATION");
    let parts: Vec<&str> = spec.split('|').collect();
    let cache = Cache::open(parts[1]).unwrap();
    match parts[0] {
        "pool" => {
            let (me, set): (u64, u64) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
            for j in (me..set).step_by(8) {
                cache.set(PREFIX, &key(j), &(1_000_000 + j)).unwrap();
            }
            for j in (me..set).step_by(8) {
                assert_eq!(cache.get::<u64>(PREFIX, &key(j)), Some(1_000_000 + j));
            }
            // Keys nobody sets: the original's value, or (not migrated yet) a miss.
            for j in (set..set + 2000).step_by(7) {
                let v = cache.get::<u64>(PREFIX, &key(j));
                assert!(v.is_none() || v == Some(j), "{j}: {v:?}");
            }
        }
        "migrate" => {}
        "set" => {
            let round: u64 = parts[2].parse().unwrap();
            for j in round_keys(round, 0) {
                cache.set(PREFIX, &key(j), &(2_000_000 + j)).unwrap();
            }
            for j in round_keys(round, 1) {
                cache.remove(PREFIX, &key(j)).unwrap();
            }
        }
        other => panic!("{other}"),
    }
    cache.flush().unwrap();
    println!("ok");
}

/// The keys a round sets (`which` 0) or removes (1).
fn round_keys(round: u64, which: u64) -> impl Iterator<Item = u64> {
    (0..KILLED_FILES).filter(move |j| j % 53 == round * 2 + which)
}

const POOL_FILES: u64 = 100_000;
const POOL_SET: u64 = 4_000;

/// Eight processes open a directory of 100,000 original files at once; each sets 500 keys
/// that have an original file while one of them migrates. Every set value stays; every
/// other original entry comes in once.
#[test]
fn a_pool_starting_on_original_files_keeps_every_set_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("temp");
    write_original_files(&dir, POOL_FILES);
    let workers: Vec<_> = (0..8)
        .map(|me| {
            spawn_child(
                "worker",
                "TOKCACHE_MIGRATION",
                &format!("pool|{}|{me}|{POOL_SET}", dir.display()),
            )
        })
        .collect();
    for w in workers {
        expect_success(w);
    }
    assert!(!dir.join(MARKER).exists(), "the migration did not finish");
    let cache = Cache::open(&dir).unwrap();
    for j in 0..POOL_FILES {
        let want = if j < POOL_SET { 1_000_000 + j } else { j };
        assert_eq!(cache.get::<u64>(PREFIX, &key(j)), Some(want), "key {j}");
    }
    assert_eq!(cache.get_stats().disk_files, POOL_FILES);
    let mut listed = 0;
    cache.for_each_entry(|_| listed += 1);
    assert_eq!(listed, POOL_FILES, "an entry listed twice or lost");
    let report = cache.verify(|_| ());
    assert!(report.problems.is_empty(), "{report:?}");
}

const KILLED_FILES: u64 = 20_000;

/// The migrating process SIGKILLed at a random point while another sets and removes keys
/// that have original files; the next open finishes the migration. Over several rounds, on
/// the same original files: every original entry there once, every set value and removal
/// kept.
#[test]
fn a_migration_killed_at_any_point_is_finished_by_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("temp");
    write_original_files(&dir, KILLED_FILES);
    let mut rng = Rng(0x5eed_f11e);
    let mut killed_midway = 0;
    for round in 0..8 {
        remove_cache_files(&dir);
        let mut migrator = spawn_child(
            "worker",
            "TOKCACHE_MIGRATION",
            &format!("migrate|{}", dir.display()),
        );
        // The setter starts once the cache exists (the migration is then under way).
        let start = Instant::now();
        while !dir.join("tokcache.ctl").exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let setter = spawn_child(
            "worker",
            "TOKCACHE_MIGRATION",
            &format!("set|{}|{round}", dir.display()),
        );
        std::thread::sleep(Duration::from_micros(rng.below(400_000)));
        migrator.kill().unwrap();
        let status = migrator.wait().unwrap();
        killed_midway += u64::from(!status.success() && dir.join(MARKER).exists());
        expect_success(setter);

        let cache = Cache::open(&dir).unwrap();
        assert!(!dir.join(MARKER).exists(), "round {round}: not finished");
        let set: Vec<u64> = round_keys(round, 0).collect();
        let removed: Vec<u64> = round_keys(round, 1).collect();
        for j in 0..KILLED_FILES {
            let want = if set.contains(&j) {
                Some(2_000_000 + j)
            } else if removed.contains(&j) {
                None
            } else {
                Some(j)
            };
            assert_eq!(
                cache.get::<u64>(PREFIX, &key(j)),
                want,
                "round {round}, key {j}"
            );
        }
        let live = KILLED_FILES - removed.len() as u64;
        assert_eq!(cache.get_stats().disk_files, live, "round {round}");
        let mut listed = 0;
        cache.for_each_entry(|_| listed += 1);
        assert_eq!(listed, live, "round {round}: an entry listed twice or lost");
    }
    println!("{killed_midway} of 8 kills landed during a migration");
    // The kills must have landed in migrations, not only before or after them.
    assert!(
        killed_midway >= 2,
        "only {killed_midway} kills during a migration"
    );
}
