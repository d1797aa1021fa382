//! Compaction builds the next index without the write lock: writers go on meanwhile, and what
//! they write is carried into the next generation (copied to the start of its log). Checked
//! against a model, through `verify`, and through a rebuild from the segments alone (which
//! replays segments in id order, so a record left behind, or replayed in the wrong order,
//! would show as a wrong value).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Rng, child_spec, expect_success, files_with, spawn_child, value_of};
use tokcache::Cache;

const ENTRIES: u64 = 200_000;

fn key(i: u64) -> String {
    format!("tokenizer:cl100k_base:prompt number {i:08}")
}

fn open(dir: &Path) -> Cache {
    // No automatic compaction: the test decides when; a small rewrite threshold, so that the
    // compaction also rewrites the mostly dead first segment.
    Cache::builder(dir)
        .compact_after_records(u64::MAX)
        .compact_after_bytes(u64::MAX)
        .rewrite_segments_with_dead_bytes(4096)
        .max_ram_entries(0)
        .open()
        .unwrap()
}

fn check(cache: &Cache, model: &HashMap<u64, Option<u64>>, when: &str) {
    let (ids, want): (Vec<u64>, Vec<Option<u64>>) = model.iter().map(|(&i, &v)| (i, v)).unzip();
    let keys: Vec<String> = ids.iter().map(|&i| key(i)).collect();
    let many = cache.get_many::<u64>("token_count", &keys);
    for ((i, want), in_batch) in ids.into_iter().zip(want).zip(many) {
        assert_eq!(in_batch, want, "{when}: key {i} through get_many");
        assert_eq!(
            cache.get::<u64>("token_count", &key(i)),
            want,
            "{when}: key {i}"
        );
    }
}

#[test]
fn writes_during_a_compaction_are_carried_over_and_survive_a_rebuild() {
    // The log goes on into the next generation; the dead first segment is rewritten.
    during_a_compaction(|c| {
        let report = c.compact().unwrap();
        assert!(report.segments_rewritten >= 1, "{report:?}");
    });
}

#[test]
fn writes_during_a_compaction_that_seals_the_log_are_copied_to_the_next_one() {
    // clear_expired (nothing expires here) seals the log: what is appended meanwhile is copied
    // to the start of a new log.
    during_a_compaction(|c| {
        assert_eq!(c.clear_expired().unwrap(), 0);
    });
}

fn during_a_compaction(compact: impl FnOnce(&Cache)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = Arc::new(open(dir));
    let mut model = HashMap::new();
    for i in 0..ENTRIES {
        cache.set("token_count", &key(i), &i).unwrap();
        model.insert(i, Some(i));
    }
    // Seals the log (clear_expired does, and nothing expires): only sealed segments are
    // rewritten.
    cache.clear_expired().unwrap();
    // Three quarters of the first segment die: the next compaction rewrites it.
    for i in 0..ENTRIES * 3 / 4 {
        cache.set("token_count", &key(i), &(i + 1)).unwrap();
        model.insert(i, Some(i + 1));
    }

    let done = Arc::new(AtomicBool::new(false));
    let sets = Arc::new(AtomicU64::new(0));
    let writer = {
        let (cache, done, sets) = (Arc::clone(&cache), Arc::clone(&done), Arc::clone(&sets));
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            let mut changed = HashMap::new();
            let mut round = 2;
            while !done.load(Ordering::Relaxed) {
                let i = rng.below(ENTRIES);
                if round % 10 == 0 {
                    cache.remove("token_count", &key(i)).unwrap();
                    changed.insert(i, None);
                } else {
                    cache.set("token_count", &key(i), &(i + round)).unwrap();
                    changed.insert(i, Some(i + round));
                }
                round += 1;
                sets.fetch_add(1, Ordering::Relaxed);
            }
            changed
        })
    };
    while sets.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    let before = sets.load(Ordering::Relaxed);
    compact(&cache);
    let during = sets.load(Ordering::Relaxed) - before;
    done.store(true, Ordering::Relaxed);
    model.extend(writer.join().unwrap());

    // Under the write lock all along (as before), the writer could not have set anything
    // while the 200,000-entry index was built and written.
    assert!(
        during >= 100,
        "only {during} sets went through during the compaction"
    );
    check(&cache, &model, "after the compaction");
    // The handle took over the part of its tail table past the new index (when the log goes
    // on): it counts what a handle opened now reads from the files.
    let fresh = open(dir);
    let (mine, theirs) = (cache.get_stats(), fresh.get_stats());
    assert_eq!(
        (mine.tail_records, mine.disk_files),
        (theirs.tail_records, theirs.disk_files),
        "the compacting handle against a fresh one"
    );
    assert!(mine.tail_records >= during.min(100), "{mine:?}");
    drop(fresh);
    let problems = cache.verify(|_| {}).problems;
    assert!(problems.is_empty(), "{problems:?}");
    drop(cache);

    let cache = open(dir);
    check(&cache, &model, "reopened");
    drop(cache);

    // Lose the index and the control page: the cache is rebuilt from its segments.
    lose_indexes_and_control_page(dir);
    let cache = open(dir);
    check(&cache, &model, "rebuilt from the segments");
}

/// Deletes every index and the control page: the next open rebuilds from the segments alone.
fn lose_indexes_and_control_page(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap();
        if name.starts_with("index-") || name == "tokcache.ctl" {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// Holds `compact.lock` as a compaction elsewhere would, until dropped (closing the file
/// releases the lock).
struct CompactionHeld(#[allow(dead_code)] std::fs::File);

impl CompactionHeld {
    fn take(dir: &Path) -> Self {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("compact.lock"))
            .unwrap();
        // By full path: std's own `File::lock_exclusive` would take precedence.
        fs2::FileExt::lock_exclusive(&f).unwrap();
        Self(f)
    }
}

#[test]
fn appends_go_on_past_the_limit_during_a_compaction_and_wait_at_one_and_a_half_times_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cache = Arc::new(
        Cache::builder(&dir)
            .compact_after_records(100)
            .open()
            .unwrap(),
    );
    let held = CompactionHeld::take(&dir);
    let sets = Arc::new(AtomicU64::new(0));
    let writer = {
        let (cache, sets) = (Arc::clone(&cache), Arc::clone(&sets));
        std::thread::spawn(move || {
            for i in 0..300 {
                cache.set("token_count", &key(i), &i).unwrap();
                sets.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Past 100 records the appends find the compaction taken and go on; at 150 they wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sets.load(Ordering::Relaxed) < 149 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    // ... and keep waiting while the compaction is held.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!writer.is_finished());
    let done = sets.load(Ordering::Relaxed);
    assert_eq!(
        done, 149,
        "sets done while another process held the compaction"
    );
    assert_eq!(cache.get_stats().index_generation, 0);
    drop(held);
    writer.join().unwrap();
    let s = cache.get_stats();
    assert!(s.index_generation >= 1, "{s:?}");
    assert!(s.tail_records < 150, "{s:?}");
    for i in 0..300 {
        assert_eq!(cache.get::<u64>("token_count", &key(i)), Some(i));
    }
}

#[test]
fn a_full_log_is_compacted_on_a_thread_or_inline_as_configured() {
    for background in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let open = || {
            Cache::builder(tmp.path())
                .compact_after_records(100)
                .compact_in_background(background)
                .open()
                .unwrap()
        };
        let cache = open();
        for i in 0..100 {
            cache.set("token_count", &key(i), &i).unwrap();
        }
        if !background {
            // The set that filled the log compacted before it returned.
            assert_eq!(cache.get_stats().index_generation, 1);
        }
        // Dropping the cache waits for a compaction under way.
        drop(cache);
        let cache = open();
        let s = cache.get_stats();
        assert_eq!((s.index_generation, s.tail_records), (1, 0), "{s:?}");
        for i in 0..100 {
            assert_eq!(cache.get::<u64>("token_count", &key(i)), Some(i));
        }
    }
}

#[test]
fn a_rebuild_leaves_out_segments_a_dead_compaction_never_published() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let segments = || files_with(dir, "tks");
    let cache = open(dir);
    cache.set("token_count", &key(1), &1u64).unwrap();
    cache.flush().unwrap();
    // What a compaction that died while sealing the log leaves: a copy of records (here, of
    // the whole log as it is now) in a segment above the log, published by no generation.
    let log = segments().pop().unwrap();
    std::fs::copy(&log, dir.join("seg-4000000000.tks")).unwrap();
    cache.set("token_count", &key(1), &2u64).unwrap();
    drop(cache);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tki") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let cache = open(dir);
    assert_eq!(cache.get::<u64>("token_count", &key(1)), Some(2));
    assert!(
        !dir.join("seg-4000000000.tks").exists(),
        "the leftover is removed: {:?}",
        segments()
    );
}

fn index_files(dir: &Path) -> usize {
    files_with(dir, "tki").len()
}

#[test]
fn recent_indexes_bound_the_tail_of_a_large_cache_and_lose_nothing() {
    // 200 records fill the tail, but a full index is rewritten only after 1/32 of its entries:
    // in between, compactions write recent indexes over it.
    const KEYS: u64 = 24_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let open = || {
        Cache::builder(dir)
            .compact_after_records(200)
            .compact_in_background(false)
            .max_ram_entries(0)
            .open()
            .unwrap()
    };
    let cache = open();
    let mut model: HashMap<u64, Option<u64>> = HashMap::new();
    let mut rng = Rng(11);
    let (mut with_recent, mut generations) = (0, 0);
    for round in 0..60_000u64 {
        let i = if round < KEYS {
            round
        } else {
            rng.below(KEYS + 2000)
        };
        if round >= KEYS && round % 7 == 0 {
            cache.remove("token_count", &key(i)).unwrap();
            model.insert(i, None);
        } else {
            cache.set("token_count", &key(i), &(i + round)).unwrap();
            model.insert(i, Some(i + round));
        }
        let s = cache.get_stats();
        assert!(s.tail_records <= 200, "round {round}: {s:?}");
        if s.index_generation != generations {
            generations = s.index_generation;
            let recent = index_files(dir) == 2;
            assert_eq!(recent, s.recent_index_records > 0, "round {round}: {s:?}");
            with_recent += usize::from(recent);
        }
        if round % 5000 == 4999 {
            check(&cache, &model, &format!("round {round}"));
            let live = model.values().filter(|v| v.is_some()).count() as u64;
            assert_eq!(cache.get_stats().disk_files, live, "round {round}");
        }
    }
    // 60,000 writes, 200 per compaction: ~300 generations, most of them recent indexes (a
    // full one only every ~750 records past 24,000 entries).
    assert!(generations >= 250, "{generations} generations");
    assert!(
        with_recent >= generations as usize / 2,
        "{with_recent} recent of {generations}"
    );
    check(&cache, &model, "at the end");
    let live = model.values().filter(|v| v.is_some()).count();
    let mut exported = 0;
    cache.for_each_entry(|_| exported += 1);
    assert_eq!(exported, live, "every live entry once");
    let problems = cache.verify(|_| {}).problems;
    assert!(problems.is_empty(), "{problems:?}");
    drop(cache);

    // Another process opens it: the full and the recent index, and a tail of at most 200.
    let cache = open();
    assert!(cache.get_stats().tail_records <= 200);
    check(&cache, &model, "reopened");
    drop(cache);

    // Lose every index and the control page: rebuilt from the segments, the same cache.
    lose_indexes_and_control_page(dir);
    let cache = open();
    check(&cache, &model, "rebuilt from the segments");
    // An explicit compaction merges everything into one full index.
    cache.compact().unwrap();
    assert_eq!(index_files(dir), 1);
    check(&cache, &model, "after a full compaction");
}

const FOLLOWED_KEYS: u64 = 30_000;

fn open_small_tail(dir: &Path) -> Cache {
    // Inline compactions: the writer's are then nearly all recent indexes, whatever the load.
    Cache::builder(dir)
        .compact_after_records(200)
        .compact_in_background(false)
        .open()
        .unwrap()
}

#[test]
#[ignore = "entry point of the writer process of recent_indexes_are_followed_by_another_process"]
fn recent_index_writer() {
    let dir = child_spec("TOKCACHE_RECENT_WRITER");
    let cache = open_small_tail(Path::new(&dir));
    let mut rng = Rng(5);
    for i in 0..FOLLOWED_KEYS {
        cache
            .set("token_count", &key(i), &value_of(&key(i)))
            .unwrap();
    }
    for _ in 0..FOLLOWED_KEYS {
        let k = key(rng.below(FOLLOWED_KEYS));
        cache.set("token_count", &k, &value_of(&k)).unwrap();
    }
    for i in (0..FOLLOWED_KEYS).filter(|i| i % 13 == 0) {
        assert!(cache.remove("token_count", &key(i)).unwrap());
    }
}

#[test]
fn recent_indexes_are_followed_by_another_process() {
    // A writer process fills a cache whose compactions write recent indexes (200-record tail,
    // full index rewritten at 1/32 of its entries); this process, RAM tier on, reads all along
    // through the generations it publishes and must end with exactly the writer's state:
    // removals included, none of them hidden by a stale RAM-tier copy.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = open_small_tail(dir);
    let mut writer = spawn_child(
        "recent_index_writer",
        "TOKCACHE_RECENT_WRITER",
        dir.to_str().unwrap(),
    );
    let mut rng = Rng(9);
    let (mut reads, mut hits, mut with_recent) = (0u64, 0u64, 0u64);
    while writer.try_wait().unwrap().is_none() {
        reads += 1;
        // Hot keys (held in the RAM tier) and random ones.
        let i = if rng.below(2) == 0 {
            rng.below(50) * 13
        } else {
            rng.below(FOLLOWED_KEYS)
        };
        if let Some(v) = cache.get::<u64>("token_count", &key(i)) {
            assert_eq!(v, value_of(&key(i)), "key {i}");
            hits += 1;
        }
        if reads % 4096 == 0 {
            with_recent += u64::from(index_files(dir) == 2);
        }
        if reads % 64 == 0 {
            // Lag behind now and then: the writer appends, compacts, and publishes
            // generations meanwhile, which this process then has to catch up with at once.
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }
    expect_success(writer);
    assert!(hits > 1000, "{hits} hits while the writer ran");
    assert!(with_recent > 0, "no recent index seen");
    for i in 0..FOLLOWED_KEYS {
        let want = (i % 13 != 0).then(|| value_of(&key(i)));
        assert_eq!(cache.get::<u64>("token_count", &key(i)), want, "key {i}");
    }
    let problems = cache.verify(|_| {}).problems;
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_flood_of_writes_ends_with_a_short_tail() {
    // Writes go on during every compaction (a full merge of this index takes tens of ms): the
    // compaction thread compacts again while they filled the tail, so that the processes that
    // open the cache after the flood have little to scan, though no append follows it.
    let tmp = tempfile::tempdir().unwrap();
    let open = || {
        Cache::builder(tmp.path())
            .compact_after_records(1000)
            .max_ram_entries(0)
            .open()
            .unwrap()
    };
    let cache = Arc::new(open());
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for i in (t..200_000).step_by(2) {
                    cache.set("token_count", &key(i), &i).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    drop(cache);
    let cache = open();
    let s = cache.get_stats();
    assert!(s.tail_records < 1000, "{s:?}");
    assert_eq!(
        cache.get::<u64>("token_count", &key(199_999)),
        Some(199_999)
    );
}

/// The length of the newest segment file: the log.
fn log_len(dir: &Path) -> u64 {
    let logs = files_with(dir, "tks");
    std::fs::metadata(logs.last().unwrap()).unwrap().len()
}

#[test]
fn a_large_log_keeps_whole_2_mib_steps_until_compact_trims_it() {
    // Past 32 MiB, the log ends on a 2 MiB boundary after the compactions its growth sets off
    // (a trim inside a 2 MiB folio of the page cache would split it); `compact()` gives all
    // the reserved space back.
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::builder(tmp.path())
        .compact_after_bytes(4 << 20)
        .compact_in_background(false)
        .max_ram_entries(0)
        .open()
        .unwrap();
    let value = "v".repeat(60_000);
    let mut generations = 0;
    for i in 0..700u64 {
        cache.set("test", &key(i), &value).unwrap();
        let s = cache.get_stats();
        if s.index_generation != generations {
            generations = s.index_generation;
            let len = log_len(tmp.path());
            if len >= 32 << 20 {
                assert_eq!(len % (2 << 20), 0, "set {i}: log of {len} bytes");
            }
        }
    }
    assert!(log_len(tmp.path()) >= 40 << 20);
    assert!(generations >= 8, "{generations} compactions");
    let before = log_len(tmp.path());
    cache.compact().unwrap();
    let after = log_len(tmp.path());
    assert!(
        after < before && !after.is_multiple_of(2 << 20),
        "{before} -> {after}"
    );
    drop(cache);
    let cache = Cache::open(tmp.path()).unwrap();
    for i in (0..700u64).step_by(37) {
        assert_eq!(cache.get::<String>("test", &key(i)).as_ref(), Some(&value));
    }
    assert!(cache.verify(|_| {}).problems.is_empty());
}
