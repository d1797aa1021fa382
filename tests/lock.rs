//! The write lock across processes (`src/lock.rs`, docs/format.md): a lock word in the control
//! page, owned by a token whose byte of `tokcache.lock` the owner keeps locked while it lives.
//! A live owner is waited for, however long it holds the word; a dead one is taken over.
// Raw system calls (fork, kill, waitpid, setuid, flock, rlimits) that std does not wrap.
#![allow(unsafe_code)]

mod common;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{child_spec, spawn_child};
use tokcache::Cache;

const ENTRY: &str = "holder";
const VAR: &str = "TOKCACHE_TEST_LOCK_HOLDER";
/// Offset of the lock word in `tokcache.ctl` (docs/format.md).
const LOCK_WORD: u64 = 40;

fn stamp_owner(dir: &Path, token: u32) {
    let ctl = OpenOptions::new()
        .write(true)
        .open(dir.join("tokcache.ctl"))
        .unwrap();
    ctl.write_all_at(&token.to_le_bytes(), LOCK_WORD).unwrap();
}

/// Holds the write lock the way a writer does (its byte, then the word), then waits to be
/// killed.
#[test]
#[ignore = "entry point of the lock-holding process"]
fn holder() {
    let spec = child_spec(VAR);
    let (dir, token) = spec.split_once(';').unwrap();
    let token: u32 = token.parse().unwrap();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(dir).join("tokcache.lock"))
        .unwrap();
    // SAFETY: a valid flock struct for F_OFD_SETLK on one byte.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = i64::from(token);
    fl.l_len = 1;
    // SAFETY: fcntl reads the flock above; the descriptor is open.
    let rc = unsafe { libc::fcntl(lock.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(rc, 0, "cannot lock byte {token}");
    stamp_owner(Path::new(dir), token);
    println!("holding");
    std::thread::sleep(Duration::from_secs(120));
}

fn set_in_background(dir: &Path) -> mpsc::Receiver<Instant> {
    let dir = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let cache = Cache::open(&dir).unwrap();
        cache.set("test", "after the holder", &7).unwrap();
        let _ = tx.send(Instant::now());
    });
    rx
}

#[test]
fn a_live_owner_is_waited_for_and_a_killed_one_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Cache::open(dir).unwrap().set("test", "before", &1).unwrap();

    let mut child = spawn_child(ENTRY, VAR, &format!("{};{}", dir.display(), 777));
    let holding = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "holding");
    assert!(holding, "the holder process did not take the lock");

    let done = set_in_background(dir);
    // The owner is alive: the writer must wait, well past the time it takes to suspect it.
    assert!(
        done.recv_timeout(Duration::from_millis(500)).is_err(),
        "a write went through while another process held the lock"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let finished = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the lock of a killed process was never taken over");
    assert!(finished.duration_since(killed) < Duration::from_secs(2));

    let cache = Cache::open(dir).unwrap();
    assert_eq!(cache.get::<u64>("test", "before"), Some(1));
    assert_eq!(cache.get::<u64>("test", "after the holder"), Some(7));
}

#[test]
fn a_word_left_by_a_process_long_gone_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Cache::open(dir).unwrap().set("test", "before", &1).unwrap();
    // Nobody holds byte 4242: its owner died without releasing the word.
    stamp_owner(dir, 4242 | 1 << 31);
    let start = Instant::now();
    let cache = Cache::open(dir).unwrap();
    cache.set("test", "after", &2).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(cache.get::<u64>("test", "after"), Some(2));
    assert_eq!(cache.get::<u64>("test", "before"), Some(1));
}

#[test]
fn many_threads_of_two_processes_keep_every_write() {
    // Contention on the word from threads and processes: each writer's keys all survive.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cache = std::sync::Arc::new(Cache::open(&dir).unwrap());
    let other = std::thread::spawn({
        let dir = dir.clone();
        move || {
            let c = Cache::open(&dir).unwrap();
            for i in 0..3000u64 {
                c.set("b", &i.to_string(), &i).unwrap();
            }
        }
    });
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let c = std::sync::Arc::clone(&cache);
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    c.set("a", &format!("{t}-{i}"), &i).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    other.join().unwrap();
    let fresh = Cache::open(&dir).unwrap();
    for t in 0..3u64 {
        for i in 0..2000u64 {
            assert_eq!(fresh.get::<u64>("a", &format!("{t}-{i}")), Some(i));
        }
    }
    for i in 0..3000u64 {
        assert_eq!(fresh.get::<u64>("b", &i.to_string()), Some(i));
    }
}
