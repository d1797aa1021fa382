//! A process killed at each kill point (src/killpoint.rs) while two other processes set, flush
//! and get: no survivor dies or hangs, nothing flushed is lost, no value is wrong, the next
//! `open` succeeds and `verify` finds no damage. One test per point; a last test fails if a
//! point in the source has no test here or no row in docs/reliability.md.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Rng, child_spec, spawn_child_with, value_of};
use tokcache::Cache;

/// What the killed process does until it reaches its point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Sets (a new prefix now and then), overwrites, removes and flushes; compacts itself
    /// when its tail is full (100 records), writing recent indexes once the cache is large.
    Sets,
    /// Sets and overwrites a few hundred keys, then `compact()` in a loop.
    Compact,
    /// Sets and overwrites a few hundred keys, then `clear_expired()` in a loop (it seals the
    /// log and rewrites segments).
    ClearExpired,
    /// Sets a few keys, then `clear_all()` in a loop: the workers' older entries may go.
    Clear,
    /// Sets with an 8 s TTL: an automatic expiry pass comes due 2 s after the first process
    /// opened the cache (the workers' TTL is a day: they never run one).
    AutoExpiry,
    /// Opens the cache with an 8 MiB disk bound (for every process) and writes 2 KB entries:
    /// compactions evict (the workers' entries too: they may be gone, never wrong).
    Evict,
    /// Opens a directory of the original's files first, and migrates them; the workers start
    /// once it is dead.
    Migrate,
    /// Opens a new directory first; the workers start once it is dead.
    Create,
    /// Opens a directory whose control page and indexes are lost (rebuilds it); the workers
    /// start once it is dead.
    Rebuild,
}

/// Every kill point, with the work that reaches it, and at which visit it is killed.
const POINTS: &[(&str, Work, u32)] = &[
    ("append.reserved", Work::Sets, 40),
    ("append.written", Work::Sets, 40),
    ("append.published", Work::Sets, 40),
    ("prefix.appended", Work::Sets, 2),
    ("prefix.synced", Work::Sets, 2),
    ("plan.recent_index_staged", Work::Sets, 2),
    ("plan.index_staged", Work::Compact, 2),
    ("compact.leftovers_removed", Work::Compact, 2),
    ("compact.renamed", Work::Compact, 2),
    ("compact.renames_synced", Work::Compact, 2),
    ("commit.trim_announced", Work::Compact, 2),
    ("commit.trimmed", Work::Compact, 2),
    ("commit.before_publish", Work::Compact, 2),
    ("commit.published", Work::Compact, 2),
    ("retire.flushed", Work::Compact, 2),
    ("garbage.removed_one", Work::Compact, 2),
    ("rewrite.written", Work::ClearExpired, 1),
    ("rewrite.synced", Work::ClearExpired, 1),
    ("commit.tail_copied", Work::ClearExpired, 1),
    ("commit.new_log", Work::ClearExpired, 2),
    ("commit.sealed", Work::ClearExpired, 2),
    ("expiry.claimed", Work::AutoExpiry, 1),
    ("evict.chosen", Work::Evict, 2),
    ("garbage.punched", Work::Evict, 2),
    ("install.log_created", Work::Clear, 1),
    ("install.index_written", Work::Clear, 1),
    ("install.published", Work::Clear, 1),
    ("file.staged", Work::Create, 1),
    ("file.renamed", Work::Create, 1),
    ("open.generation_written", Work::Create, 1),
    ("migration.batch", Work::Migrate, 1),
    ("migration.migrated", Work::Migrate, 1),
    ("rebuild.written", Work::Rebuild, 1),
];

const PREFIX: &str = "token_count";
/// The disk bound of [`Work::Evict`].
const EVICT_BOUND: u64 = 8 << 20;
/// Original files made for [`Work::Migrate`] (over 1 MiB of records: more than one batch).
const ORIGINAL_FILES: u64 = 3000;

fn worker_key(worker: u64, i: u64) -> String {
    format!(
        "tokenizer:cl100k_base:worker {worker} message {i} {}",
        "w".repeat((i % 41) as usize)
    )
}

fn victim_key(i: u64) -> String {
    format!(
        "tokenizer:cl100k_base:victim {i} {}",
        "v".repeat((i % 37) as usize)
    )
}

fn original_key(i: u64) -> String {
    format!("tokenizer:cl100k_base:original {i} {}", "o".repeat(300))
}

fn open(dir: &str) -> Cache {
    Cache::builder(dir)
        .compact_after_records(100)
        .rewrite_segments_with_dead_bytes(4096)
        .open()
        .unwrap()
}

/// Sets its keys, reads an earlier one back after each set, flushes every 32 sets and says so
/// (`F n`: its first n keys are flushed); once `DIR.after` exists (the victim is dead) it says
/// where it was (`A n`); stops at `DIR.stop`. `strict`: every earlier key must be there (no
/// clear runs).
#[test]
#[ignore = "entry point of the worker processes"]
fn kill_point_worker() {
    let spec = child_spec("TOKCACHE_KP_WORKER");
    let mut parts = spec.split('|');
    let (dir, worker, strict) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
        parts.next().unwrap() == "strict",
    );
    let cache = open(dir);
    let (after, stop) = (format!("{dir}.after"), format!("{dir}.stop"));
    let mut rng = Rng(worker + 11);
    let mut told_after = false;
    let mut i = 0u64;
    loop {
        if !told_after && Path::new(&after).exists() {
            println!("A {i}");
            told_after = true;
        }
        let k = worker_key(worker, i);
        cache.set(PREFIX, &k, &value_of(&k)).unwrap();
        i += 1;
        let old = worker_key(worker, rng.below(i));
        let got = cache.get::<u64>(PREFIX, &old);
        assert!(
            got == Some(value_of(&old)) || (!strict && got.is_none()),
            "worker {worker}: {old} read as {got:?}"
        );
        if i.is_multiple_of(32) {
            cache.flush().unwrap();
            println!("F {i}");
            if Path::new(&stop).exists() {
                return;
            }
        }
    }
}

/// The process that dies at its kill point (`TOKCACHE_KILL_AT`), doing its [`Work`] until then.
/// Exits normally (and the test fails) if it never gets there.
#[test]
#[ignore = "entry point of the process killed at a kill point"]
fn kill_point_victim() {
    let spec = child_spec("TOKCACHE_KP_VICTIM");
    let (dir, work) = spec.split_once('|').unwrap();
    let work = POINTS
        .iter()
        .find(|(_, w, _)| format!("{w:?}") == work)
        .unwrap()
        .1;
    let cache = match work {
        // Compactions only when it asks for them, after the workers appended.
        Work::Compact | Work::ClearExpired | Work::Clear => Cache::builder(dir)
            .compact_after_records(1 << 40)
            .compact_after_bytes(1 << 40)
            .rewrite_segments_with_dead_bytes(4096)
            .open()
            .unwrap(),
        Work::Evict => Cache::builder(dir)
            .compact_after_records(100)
            .max_disk_bytes(EVICT_BOUND)
            .open()
            .unwrap(),
        Work::AutoExpiry => Cache::builder(dir)
            .compact_after_records(100)
            .ttl(Duration::from_secs(8))
            .open()
            .unwrap(),
        _ => open(dir),
    };
    let set = |i: u64| {
        let k = victim_key(i);
        cache.set(PREFIX, &k, &value_of(&k)).unwrap();
    };
    let flush = |n: u64| {
        cache.flush().unwrap();
        println!("F {n}");
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    match work {
        Work::AutoExpiry => {
            for i in 0.. {
                set(i);
                if i % 64 == 63 {
                    flush(i + 1);
                }
                if Instant::now() > deadline {
                    break;
                }
            }
        }
        Work::Evict => {
            for i in 0..200_000 {
                set(i);
                cache
                    .set("bulk", &format!("bulk {i}"), &"b".repeat(2000))
                    .unwrap();
                if i % 64 == 63 {
                    flush(i + 1);
                }
            }
        }
        Work::Sets => {
            for i in 0..200_000 {
                set(i);
                if i % 5 == 0 {
                    set(i / 2); // an overwrite, with the same value
                }
                if i % 997 == 0 {
                    // A new prefix: the prefix table grows.
                    cache.set(&format!("p{i}"), "k", &1u64).unwrap();
                }
                if i % 64 == 63 {
                    flush(i + 1);
                }
            }
        }
        Work::Compact | Work::ClearExpired | Work::Clear => {
            for i in 0..300 {
                set(i);
            }
            flush(300);
            while Instant::now() < deadline {
                for i in 0..300 {
                    set(i); // dead bytes for segment rewrites
                }
                // The workers append after these sets before the compaction: they have seen
                // the log as these sets grew it, and the compaction's trim shrinks it under
                // them.
                let log_bytes = || {
                    let _ = cache.get::<u64>(PREFIX, "catch up");
                    cache.get_stats().segment_bytes
                };
                let mine = log_bytes();
                while log_bytes() < mine + 4096 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                match work {
                    Work::Compact => drop(cache.compact().unwrap()),
                    Work::ClearExpired => drop(cache.clear_expired().unwrap()),
                    _ => cache.clear_all().unwrap(),
                }
            }
        }
        Work::Migrate | Work::Create | Work::Rebuild => {} // reached in `open`
    }
    println!("never reached its kill point");
}

/// A child process and the lines it printed, read on a thread.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The last `F n` seen, and the `A n` line if any.
    flushed: u64,
    after: Option<u64>,
}

impl Proc {
    fn spawn(entry: &str, vars: &[(&str, &str)]) -> Self {
        let mut child = spawn_child_with(entry, vars);
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            flushed: 0,
            after: None,
        }
    }

    /// Takes in what it printed; `false` if it has exited.
    fn poll(&mut self) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            if let Some(n) = line.strip_prefix("F ") {
                self.flushed = n.parse().unwrap();
            } else if let Some(n) = line.strip_prefix("A ") {
                self.after = Some(n.parse().unwrap());
            }
        }
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until `until` holds of it, failing if it exits or 60 s pass first.
    fn wait_for(&mut self, what: &str, until: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alive = self.poll();
            if until(self) {
                return;
            }
            if !alive {
                let status = self.child.wait().unwrap();
                panic!(
                    "exited ({status}) while waiting for {what}: {}",
                    self.stderr()
                );
            }
            assert!(Instant::now() < deadline, "hung while waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for it to exit (60 s at most: then it hung).
    fn exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while self.poll() {}
                self.poll();
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("hung");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }
}

fn kill_at(point: &str) {
    let &(_, work, nth) = POINTS.iter().find(|(p, _, _)| *p == point).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir_path = tmp.path().join("cache");
    let dir = dir_path.to_str().unwrap().to_string();
    let strict = !matches!(work, Work::Clear | Work::Evict);
    match work {
        Work::Migrate => {
            common::write_original_files(&dir_path, PREFIX, (0..ORIGINAL_FILES).map(original_key));
        }
        Work::Rebuild => {
            // A cache with entries, then its control page and indexes lost.
            let c = open(&dir);
            for i in 0..500 {
                let k = victim_key(i);
                c.set(PREFIX, &k, &value_of(&k)).unwrap();
            }
            c.compact().unwrap();
            c.flush().unwrap();
            drop(c);
            for e in std::fs::read_dir(&dir_path).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                if name.ends_with(".tki") || name == "tokcache.ctl" {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        _ => {}
    }
    let alone = matches!(work, Work::Migrate | Work::Create | Work::Rebuild);
    let kill_at = format!("{point}@{nth}");
    let victim_spec = format!("{dir}|{work:?}");
    let spawn_victim = || {
        Proc::spawn(
            "kill_point_victim",
            &[
                ("TOKCACHE_KP_VICTIM", victim_spec.as_str()),
                ("TOKCACHE_KILL_AT", kill_at.as_str()),
            ],
        )
    };
    let spawn_workers = || -> Vec<Proc> {
        (0..2)
            .map(|w| {
                let spec = format!("{dir}|{w}|{}", if strict { "strict" } else { "lenient" });
                Proc::spawn(
                    "kill_point_worker",
                    &[("TOKCACHE_KP_WORKER", spec.as_str())],
                )
            })
            .collect()
    };
    // The victim must die of SIGKILL: then it reached the point.
    let killed_there = |victim: &mut Proc| {
        let status = victim.exit();
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the victim was not killed there: {status:?} {}",
            victim.stderr()
        );
    };
    let (mut victim, mut workers);
    if alone {
        // The point is on the way through `open`: the victim must be the first to open.
        victim = spawn_victim();
        killed_there(&mut victim);
        workers = spawn_workers();
    } else {
        workers = spawn_workers();
        for w in &mut workers {
            w.wait_for("a first flush", |w| w.flushed > 0);
        }
        victim = spawn_victim();
        killed_there(&mut victim);
    }
    // The workers go on past the death: each sets and flushes at least 200 more keys.
    std::fs::write(format!("{dir}.after"), "").unwrap();
    for w in &mut workers {
        w.wait_for("the victim's death to be seen", |w| w.after.is_some());
        let after = w.after.unwrap();
        w.wait_for("200 sets after the kill", |w| w.flushed >= after + 200);
    }
    std::fs::write(format!("{dir}.stop"), "").unwrap();
    let mut done = Vec::new();
    for w in &mut workers {
        let status = w.exit();
        assert!(
            status.success(),
            "{point}: a worker failed: {status:?}\n{}",
            w.stderr()
        );
        done.push((w.flushed, w.after.unwrap()));
    }

    // The next open succeeds; every flushed entry is there (of the workers, from the victim's
    // death on when a clear may have run; of the victim, unless a clear ran); no value wrong.
    let cache = open(&dir);
    for (worker, &(flushed, after)) in done.iter().enumerate() {
        let from = if strict { 0 } else { after };
        for i in 0..flushed {
            let k = worker_key(worker as u64, i);
            let got = cache.get::<u64>(PREFIX, &k);
            assert!(
                got == Some(value_of(&k)) || (i < from && got.is_none()),
                "{point}: worker {worker}'s flushed entry {i} of {flushed} reads {got:?}"
            );
        }
    }
    let victim_flushed = match work {
        Work::Rebuild => 500,
        _ => victim.flushed,
    };
    for i in 0..victim_flushed {
        let k = victim_key(i);
        let got = cache.get::<u64>(PREFIX, &k);
        assert!(
            got == Some(value_of(&k)) || (!strict && got.is_none()),
            "{point}: the victim's flushed entry {i} of {victim_flushed} reads {got:?}"
        );
    }
    if work == Work::Migrate {
        for i in 0..ORIGINAL_FILES {
            let k = original_key(i);
            assert_eq!(
                cache.get::<u64>(PREFIX, &k),
                Some(value_of(&k)),
                "{point}: original entry {i} not migrated"
            );
        }
    }
    let report = cache.verify(|_| {});
    assert!(report.is_sound(), "{point}: {:?}", report.problems);
    // What the kill left is litter the next compaction removes.
    cache.compact().unwrap();
    let report = cache.verify(|_| {});
    assert!(report.is_sound(), "{point}: {:?}", report.problems);
    assert!(report.litter.is_empty(), "{point}: {:?}", report.litter);
    if work == Work::Evict {
        // The bound holds again.
        let s = cache.get_stats();
        assert!(s.disk_bytes <= EVICT_BOUND, "{point}: {s:?}");
        assert!(s.disk_evictions > 0, "{point}: {s:?}");
    }
}

macro_rules! kill_tests {
    ($($test:ident: $point:literal,)*) => {
        $(
            #[test]
            fn $test() {
                kill_at($point);
            }
        )*
        /// The points that have a test above.
        const TESTED: &[&str] = &[$($point),*];
    };
}

kill_tests! {
    killed_after_reserving_space_for_an_append: "append.reserved",
    killed_after_writing_an_append: "append.written",
    killed_after_publishing_an_append: "append.published",
    killed_after_appending_to_the_prefix_table: "prefix.appended",
    killed_after_syncing_the_prefix_table: "prefix.synced",
    killed_after_staging_a_recent_index: "plan.recent_index_staged",
    killed_after_staging_a_full_index: "plan.index_staged",
    killed_after_removing_leftovers: "compact.leftovers_removed",
    killed_after_renaming_a_staged_file: "compact.renamed",
    killed_after_syncing_the_renames: "compact.renames_synced",
    killed_after_announcing_a_trim: "commit.trim_announced",
    killed_after_trimming_the_log: "commit.trimmed",
    killed_before_publishing_a_generation: "commit.before_publish",
    killed_after_publishing_a_generation: "commit.published",
    killed_after_flushing_a_published_generation: "retire.flushed",
    killed_after_removing_one_retired_file: "garbage.removed_one",
    killed_while_rewriting_a_segment: "rewrite.written",
    killed_after_syncing_a_rewritten_segment: "rewrite.synced",
    killed_after_copying_the_tail_to_a_new_log: "commit.tail_copied",
    killed_after_making_a_new_log: "commit.new_log",
    killed_after_sealing_a_log: "commit.sealed",
    killed_after_claiming_an_automatic_expiry_pass: "expiry.claimed",
    killed_after_choosing_segments_to_evict: "evict.chosen",
    killed_after_freeing_a_retired_segments_blocks: "garbage.punched",
    killed_after_making_a_cleared_log: "install.log_created",
    killed_after_writing_a_cleared_index: "install.index_written",
    killed_after_publishing_a_cleared_generation: "install.published",
    killed_before_renaming_a_new_file: "file.staged",
    killed_after_renaming_a_new_file: "file.renamed",
    killed_while_creating_a_cache: "open.generation_written",
    killed_while_migrating_original_files: "migration.batch",
    killed_after_migrating_original_files: "migration.migrated",
    killed_while_rebuilding: "rebuild.written",
}

/// Every `kill_point!("...")` in the source, by walking `src/`.
fn points_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, found);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("kill_point!(\"").skip(1) {
                    found.insert(part.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    found
}

#[test]
fn every_kill_point_has_a_test_and_a_row_in_the_docs() {
    let source = points_in_source();
    assert!(source.len() >= 20, "{source:?}");
    let listed: BTreeSet<String> = POINTS.iter().map(|(p, _, _)| p.to_string()).collect();
    let tested: BTreeSet<String> = TESTED.iter().map(ToString::to_string).collect();
    assert_eq!(source, listed, "points in src/ vs. POINTS");
    assert_eq!(source, tested, "points in src/ vs. tests");
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reliability.md"))
            .unwrap();
    let missing: Vec<_> = source
        .iter()
        .filter(|p| !docs.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/reliability.md: {missing:?}"
    );
}
