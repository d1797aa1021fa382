//! Pools forked from a parent that opened the cache (a prefork server, Python's
//! `multiprocessing` with `fork`): the workers use the handle they inherited. The parent is
//! this test binary re-run with `TOKCACHE_FORK_PARENT` set (the ignored `fork_parent` test);
//! it opens the cache, starts a compaction, forks the workers and judges them.
// Raw system calls (fork, kill, waitpid, setuid, flock, rlimits) that std does not wrap.
#![allow(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Rng, child_spec, expect_success, spawn_child};
use tokcache::Cache;

const WORKERS: usize = 8;
/// Keys written before the fork; a compaction of them is under way when the parent forks.
const BEFORE: usize = 3000;
/// The cache's `compact_after_records`: a compaction starts at every 1500 records.
const COMPACT_AFTER: u64 = BEFORE as u64 / 2;
/// How long the parent waits for the workers that were not killed before it calls them blocked
/// (they take seconds; the margin is for a loaded machine).
const DEADLINE: Duration = Duration::from_secs(300);

fn key(kind: &str, n: u64) -> String {
    format!("{kind}-{n}")
}

/// A worker: `ops` mixed operations on the inherited handle, `writes` in 10 of them sets;
/// every value read must be the one its key was written with. Returns the number of wrong
/// values.
fn work(cache: &Cache, me: u64, ops: u64, writes: u64, seed: u64) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut wrong = 0;
    let mut written = vec![false; 5000];
    for i in 0..ops {
        let op = rng.below(10);
        match if op < writes { op % 5 } else { op.max(5) } {
            0..=3 => {
                written[(i % 5000) as usize] = true;
                let k = key(&format!("w{me}"), i % 5000);
                cache.set("test", &k, &common::value_of(&k)).unwrap();
            }
            4 => {
                let k = key("shared", rng.below(500));
                cache.set("test", &k, &common::value_of(&k)).unwrap();
            }
            5 => {
                let k = key("before", rng.below(BEFORE as u64));
                wrong += u64::from(cache.get::<u64>("test", &k) != Some(common::value_of(&k)));
            }
            _ => {
                let k = key(&format!("w{}", rng.below(WORKERS as u64)), rng.below(5000));
                if let Some(v) = cache.get::<u64>("test", &k) {
                    wrong += u64::from(v != common::value_of(&k));
                }
            }
        }
    }
    // Every key it wrote is there, with its value.
    for n in (0..5000).filter(|&n| written[n as usize]) {
        let k = key(&format!("w{me}"), n);
        wrong += u64::from(cache.get::<u64>("test", &k) != Some(common::value_of(&k)));
    }
    wrong
}

/// Entry of the parent process: `dir|ops|kill|seed`. Prints `ok` when every worker that was
/// not killed finished in time with no wrong value.
#[test]
#[ignore = "entry point of the parent process of this file"]
fn fork_parent() {
    let spec = child_spec("TOKCACHE_FORK_PARENT");
    let parts: Vec<&str> = spec.split('|').collect();
    let (dir, ops, kill, seed): (&str, u64, bool, u64) = (
        parts[0],
        parts[1].parse().unwrap(),
        parts[2] == "kill",
        parts[3].parse().unwrap(),
    );
    // In an Option so that a worker can drop its copy (and the parent keep its own).
    let mut handle = Some(
        Cache::builder(dir)
            .max_ram_entries(256)
            .compact_after_records(COMPACT_AFTER)
            .open()
            .unwrap(),
    );
    let cache = handle.as_ref().unwrap();
    for n in 0..BEFORE as u64 {
        let k = key("before", n);
        cache.set("test", &k, &common::value_of(&k)).unwrap();
    }
    // Fork while this process's compaction thread holds the compaction lock: write on until
    // a write has started one and it is seen under way.
    let mut extra = 0u64;
    while !compaction_under_way(dir) {
        let k = key("before", extra % BEFORE as u64);
        cache.set("test", &k, &common::value_of(&k)).unwrap();
        extra += 1;
    }
    let mut pids = Vec::new();
    for me in 0..WORKERS as u64 {
        // SAFETY: the child runs only this test's code on the inherited handle, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // Killing a worker is about a dead writer holding the write lock: mostly sets.
            let writes = if kill { 9 } else { 5 };
            let wrong = work(cache, me, ops, writes, seed ^ ((me + 1) * 0x9e37_79b9));
            cache.flush().unwrap();
            // Dropping the handle in the child waits for the child's own compaction, if one
            // runs, never for the parent's thread, which the child does not have.
            drop(handle.take());
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if wrong == 0 { 0 } else { 10 }) };
        }
        pids.push(pid);
    }
    let mut rng = Rng(seed | 1);
    let victim = if kill {
        std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        let v = pids[rng.below(WORKERS as u64) as usize];
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(v, libc::SIGKILL) };
        Some(v)
    } else {
        None
    };
    let start = Instant::now();
    let mut left = pids.clone();
    let mut failed = Vec::new();
    while !left.is_empty() {
        if start.elapsed() > DEADLINE {
            for &p in &left {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            panic!("{} workers still blocked after {DEADLINE:?}", left.len());
        }
        left.retain(|&p| {
            let mut status = 0;
            // SAFETY: waitpid(2) of our own child, status into a local.
            let rc = unsafe { libc::waitpid(p, &mut status, libc::WNOHANG) };
            if rc == 0 {
                return true;
            }
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            if !ok && Some(p) != victim {
                failed.push((p, status));
            }
            false
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        failed.is_empty(),
        "workers failed (pid, status): {failed:?}"
    );
    // The parent still works, and sees every worker's writes.
    for n in 0..BEFORE as u64 {
        let k = key("before", n);
        assert_eq!(cache.get::<u64>("test", &k), Some(common::value_of(&k)));
    }
    let mut seen = 0u64;
    cache.for_each_entry(|e| {
        let v: u64 = serde_json::from_str(&e.value_json().unwrap()).unwrap();
        assert_eq!(v, common::value_of(e.key()), "{}", e.key());
        seen += 1;
    });
    assert!(seen >= BEFORE as u64);
    let k = key("parent", 1);
    cache.set("test", &k, &1u64).unwrap();
    assert_eq!(cache.get::<u64>("test", &k), Some(1));
    println!("ok {seen} entries");
}

/// Whether a process holds `compact.lock` (docs/format.md): a compaction is under way.
fn compaction_under_way(dir: &str) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(Path::new(dir).join("compact.lock")).unwrap();
    // SAFETY: flock(2) on a descriptor this frame owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

fn run_parent(ops: u64, kill: bool, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = format!(
        "{}|{ops}|{}|{seed}",
        tmp.path().display(),
        if kill { "kill" } else { "all" }
    );
    let out = expect_success(spawn_child("fork_parent", "TOKCACHE_FORK_PARENT", &spec));
    assert!(out.contains("ok "), "{out}");
    let cache = Cache::open(tmp.path()).unwrap();
    let report = cache.verify(|_| ());
    assert!(report.problems.is_empty(), "{report:?}");
}

/// 8 workers x 50,000 operations on the handle the parent opened before forking, while the
/// parent's compaction runs: nothing lost, nothing wrong, the parent goes on after them.
#[test]
fn forked_workers_use_the_parents_handle() {
    run_parent(50_000, false, 7);
}

/// One worker SIGKILLed at a random moment while all write, over many rounds: the others
/// finish (a dead worker that held the write lock is found dead), nothing wrong is read.
#[test]
fn a_killed_forked_worker_stops_no_one() {
    for round in 0..20 {
        run_parent(4_000, true, 1000 + round);
    }
}
