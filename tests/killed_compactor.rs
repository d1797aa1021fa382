//! Two writer processes set, flush and read back while a third process compacts in a loop and
//! is SIGKILLed at a random moment, hundreds of times: no writer dies, nothing flushed is lost,
//! no value is wrong, and `verify` finds the cache sound.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Rng, child_spec, expect_success, spawn_child, value_of};
use tokcache::Cache;

fn key(writer: u64, i: u64) -> String {
    format!(
        "tokenizer:cl100k_base:writer {writer} message {i} {}",
        "x".repeat((i % 61) as usize)
    )
}

fn open(dir: &str) -> Cache {
    Cache::builder(dir)
        .compact_after_records(2000)
        .open()
        .unwrap()
}

/// A writer: sets its own keys, flushes every 64 sets, reads one of its earlier keys back
/// after each set (it must be there, with its value), until the stop file appears; then
/// flushes and prints how many keys it set.
#[test]
#[ignore = "entry point of the writer processes"]
fn killed_compactor_writer() {
    let spec = child_spec("TOKCACHE_KC_WRITER");
    let (dir, writer) = spec.split_once('|').unwrap();
    let writer: u64 = writer.parse().unwrap();
    let cache = open(dir);
    let stop = format!("{dir}.stop");
    let mut rng = Rng(writer + 1);
    let mut i = 0u64;
    while !i.is_multiple_of(64) || !Path::new(&stop).exists() {
        let k = key(writer, i);
        cache.set("token_count", &k, &value_of(&k)).unwrap();
        i += 1;
        let old = key(writer, rng.below(i));
        assert_eq!(
            cache.get::<u64>("token_count", &old),
            Some(value_of(&old)),
            "{old}"
        );
        if i.is_multiple_of(64) {
            cache.flush().unwrap();
        }
    }
    cache.flush().unwrap();
    println!("{i}");
}

/// The compactor: compacts until it is killed.
#[test]
#[ignore = "entry point of the compactor process that gets killed"]
fn killed_compactor_compactor() {
    let dir = child_spec("TOKCACHE_KC_COMPACTOR");
    let cache = open(&dir);
    loop {
        cache.compact().unwrap();
    }
}

fn run(kills: u64, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let dir = dir.to_str().unwrap().to_string();
    drop(open(&dir));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            spawn_child(
                "killed_compactor_writer",
                "TOKCACHE_KC_WRITER",
                &format!("{dir}|{w}"),
            )
        })
        .collect();
    let mut rng = Rng(seed);
    let start = Instant::now();
    for _ in 0..kills {
        let mut c = spawn_child("killed_compactor_compactor", "TOKCACHE_KC_COMPACTOR", &dir);
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(118_000)));
        c.kill().unwrap(); // SIGKILL
        let status = c.wait().unwrap();
        assert!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "the compactor ended on its own: {status:?}"
        );
    }
    std::fs::write(format!("{dir}.stop"), "").unwrap();
    let counts: Vec<u64> = writers
        .into_iter()
        .map(|w| {
            let out = expect_success(w);
            out.lines().find_map(|l| l.trim().parse().ok()).unwrap()
        })
        .collect();
    eprintln!("{kills} kills in {:?}, sets {counts:?}", start.elapsed());
    let cache = open(&dir);
    for (w, &n) in counts.iter().enumerate() {
        assert!(n > 0);
        let lost = (0..n)
            .filter(|&i| {
                let k = key(w as u64, i);
                cache.get::<u64>("token_count", &k) != Some(value_of(&k))
            })
            .count();
        assert_eq!(lost, 0, "writer {w}: {lost} of {n} flushed entries lost");
    }
    let report = cache.verify(|_| {});
    assert!(report.is_sound(), "{:?}", report.problems);
}

#[test]
fn two_writers_and_a_compactor_killed_100_times() {
    run(100, 0xc0ffee);
}

#[test]
#[ignore = "slow: 300 kills (cargo test --test killed_compactor -- --ignored many)"]
fn two_writers_and_a_compactor_killed_many_times() {
    run(300, 0xbeef);
}
