//! Pool statistics across real processes: four processes with known numbers of sets, hits and
//! misses (one of them SIGKILLed), read from a fifth; slots of dead processes taken over keep
//! their counts; reset.

mod common;

use std::io::{BufRead, BufReader};

use common::{child_spec, expect_success, spawn_child};
use tokcache::Cache;

/// Sets `sets` keys of its own, reads each of the first `hits` back and `misses` absent keys,
/// then says `done`; with `wait`, it then waits to be killed.
#[test]
#[ignore = "entry point of the pool's worker processes"]
fn pool_worker() {
    let spec = child_spec("TOKCACHE_POOL_WORKER");
    let p: Vec<&str> = spec.split('|').collect();
    let (dir, id) = (p[0], p[1]);
    let [sets, hits, misses]: [u64; 3] = [p[2], p[3], p[4]].map(|n| n.parse().unwrap());
    let cache = Cache::builder(dir).max_ram_entries(100).open().unwrap();
    for i in 0..sets {
        cache.set("test", &format!("{id}-{i}"), &i).unwrap();
    }
    for i in 0..hits {
        assert_eq!(cache.get::<u64>("test", &format!("{id}-{i}")), Some(i));
    }
    for i in 0..misses {
        assert_eq!(cache.get::<u64>("test", &format!("{id}-absent-{i}")), None);
    }
    cache.flush().unwrap();
    println!("done");
    if p[5] == "wait" {
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}

#[test]
fn four_processes_counted_exactly_one_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let dir_s = dir.to_str().unwrap();
    // (sets, hits, misses): 1000 sets over a 100-entry RAM tier, so hits come from disk too.
    let work = [(1000, 700, 50), (10, 10, 0), (0, 0, 333), (250, 249, 7)];
    let mut killed = None;
    for (w, &(s, h, m)) in work.iter().enumerate() {
        let last = w == work.len() - 1;
        let spec = format!(
            "{dir_s}|w{w}|{s}|{h}|{m}|{}",
            if last { "wait" } else { "exit" }
        );
        let mut child = spawn_child("pool_worker", "TOKCACHE_POOL_WORKER", &spec);
        if last {
            let out = child.stdout.take().unwrap();
            let done = BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("done"));
            assert!(done);
            killed = Some(child);
        } else {
            expect_success(child);
        }
    }
    let mut killed = killed.unwrap();
    let pool = tokcache::pool_stats(&dir).unwrap();
    assert_eq!(pool.processes.len(), 1, "the waiting process is alive");
    assert_eq!(pool.processes[0].pid, killed.id());
    assert_eq!(pool.processes[0].counts.sets, 250);
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();

    let expect = |pool: &tokcache::PoolStats| {
        let t = &pool.totals;
        assert_eq!(t.sets, 1260, "{t:?}");
        assert_eq!(t.hits(), 959, "{t:?}");
        assert_eq!(t.misses, 390, "{t:?}");
        assert_eq!(t.ram_hits + t.disk_hits, 959, "{t:?}");
        assert!(
            t.disk_hits >= 600,
            "700 reads over a 100-entry RAM tier: {t:?}"
        );
        assert!(t.ram_evictions >= 900, "{t:?}");
    };
    let pool = tokcache::pool_stats(&dir).unwrap();
    expect(&pool);
    assert!(pool.processes.is_empty(), "{:?}", pool.processes);

    // A new process takes over a dead one's slot: the totals keep that one's counts.
    let cache = Cache::open(&dir).unwrap();
    let pool = cache.pool_stats().unwrap();
    expect(&pool);
    assert_eq!(pool.processes.len(), 1);
    assert_eq!(pool.processes[0].pid, std::process::id());
    assert_eq!(pool.processes[0].counts, tokcache::PoolCounts::default());
    let _ = cache.get::<u64>("test", "w1-3");
    assert_eq!(cache.pool_stats().unwrap().totals.hits(), 960);

    cache.reset_pool_stats().unwrap();
    let pool = cache.pool_stats().unwrap();
    assert_eq!(pool.totals, tokcache::PoolCounts::default());
    assert_eq!(pool.processes.len(), 1);
}

#[test]
fn handles_that_cannot_write_count_for_themselves_only() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (ram_only, _) = Cache::builder(&file).open_or_ram_only();
    ram_only.set("test", "k", &1u64).unwrap();
    assert_eq!(ram_only.get::<u64>("test", "k"), Some(1));
    assert_eq!(ram_only.get_stats().ram_hits, 1);
    // Nothing to read there: an empty pool, not an error.
    assert_eq!(
        ram_only.pool_stats().unwrap(),
        tokcache::PoolStats::default()
    );
}
