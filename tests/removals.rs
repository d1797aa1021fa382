//! Removals survive the loss of the index: a rebuild replays every segment left, so a removal
//! must stay on disk as long as an older record of its key does (docs/format.md, compaction).
//! Each test removes keys, compacts in a way that used to let the removal go, deletes the index
//! and checks that the rebuild does not bring the removed entries back.

use std::path::Path;

use tokcache::Cache;

fn open(dir: &Path, rewrite_dead_bytes: u64) -> Cache {
    Cache::builder(dir)
        .compact_after_records(1_000_000)
        .rewrite_segments_with_dead_bytes(rewrite_dead_bytes)
        .open()
        .unwrap()
}

/// Deletes every index file, so that the next open rebuilds from the segments.
fn lose_the_index(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("index-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

fn key(i: u32) -> String {
    format!("key-{i}")
}

#[test]
fn a_log_holding_only_removals_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = open(dir, 16 << 20);
    for i in 0..10 {
        cache.set("test", &key(i), &i).unwrap();
    }
    cache.compact().unwrap();
    for i in 0..3 {
        assert!(cache.remove("test", &key(i)).unwrap());
    }
    // The log now holds nothing but the three removals.
    cache.compact().unwrap();
    drop(cache);
    lose_the_index(dir);

    let cache = open(dir, 16 << 20);
    for i in 0..10 {
        let want = (i >= 3).then_some(i);
        assert_eq!(cache.get::<u32>("test", &key(i)), want, "key {i}");
    }
    assert_eq!(cache.get_stats().disk_files, 7);
}

#[test]
fn removals_move_with_a_rewritten_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = open(dir, 0); // rewrite any segment at least half dead
    // "keeper" keeps the first segment (and the old records of the keys removed below) alive.
    cache.set("test", "keeper", &"k".repeat(4000)).unwrap();
    cache.set("test", "removed", &1).unwrap();
    cache.set("test", "removed, then set again", &1).unwrap();
    // clear_expired (nothing expires) seals the log: only sealed segments are rewritten.
    cache.clear_expired().unwrap();
    // The next log: two removals, and entries that are overwritten below, so that the log
    // becomes mostly dead and compaction rewrites it.
    cache.remove("test", "removed").unwrap();
    cache.remove("test", "removed, then set again").unwrap();
    for i in 0..50 {
        cache.set("test", &key(i), &i).unwrap();
    }
    cache.clear_expired().unwrap();
    for i in 0..50 {
        cache.set("test", &key(i), &(i + 100)).unwrap();
    }
    cache.set("test", "removed, then set again", &2).unwrap();
    let report = cache.compact().unwrap();
    assert!(report.segments_rewritten > 0, "{report:?}");
    drop(cache);
    lose_the_index(dir);

    let cache = open(dir, 0);
    assert_eq!(
        cache.get::<String>("test", "keeper"),
        Some("k".repeat(4000))
    );
    assert_eq!(cache.get::<u32>("test", "removed"), None);
    assert_eq!(cache.get::<u32>("test", "removed, then set again"), Some(2));
    for i in 0..50 {
        assert_eq!(cache.get::<u32>("test", &key(i)), Some(i + 100));
    }
}

#[test]
fn clear_expired_lets_removals_go_once_nothing_older_needs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = open(dir, 16 << 20);
    cache.set("test", "a", &1).unwrap();
    cache.compact().unwrap();
    cache.remove("test", "a").unwrap();
    cache.compact().unwrap();
    assert!(cache.get_stats().dead_bytes > 0, "the removal is kept");
    // The key comes back: its removal is no longer needed, and clear_expired reclaims it.
    cache.set("test", "a", &2).unwrap();
    cache.clear_expired().unwrap();
    let stats = cache.get_stats();
    assert_eq!(
        stats.dead_bytes, 0,
        "removal-only segment not reclaimed: {stats:?}"
    );
    drop(cache);
    lose_the_index(dir);
    assert_eq!(open(dir, 16 << 20).get::<u32>("test", "a"), Some(2));
}

/// Two compactions in quick succession (one the tail set off, then an explicit `compact()`)
/// after the index was rebuilt: the second once reused the id of a segment the first had
/// dropped while its deletion (by name, after a grace, on another thread) was pending, and
/// that deletion took the new segment and the entry in it. Found by the property test below.
#[test]
fn an_explicit_compaction_right_after_a_background_one_keeps_every_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let small = |d: &Path| {
        Cache::builder(d)
            .compact_after_records(5)
            .rewrite_segments_with_dead_bytes(0)
            .open()
            .unwrap()
    };
    let cache = small(dir);
    cache.set("t", "k8", &53881u16).unwrap();
    cache.set("t", "k2", &8772u16).unwrap();
    drop(cache);
    lose_the_index(dir);
    let cache = small(dir);
    for (k, v) in [(2, 65275u16), (6, 8980)] {
        cache.set("t", &format!("k{k}"), &v).unwrap();
    }
    cache.clear_expired().unwrap();
    for (k, v) in [(10, 49702u16), (0, 23069)] {
        cache.set("t", &format!("k{k}"), &v).unwrap();
    }
    cache.remove("t", "k8").unwrap();
    for (k, v) in [(7, 23765u16), (7, 31071), (10, 21827), (3, 54352)] {
        cache.set("t", &format!("k{k}"), &v).unwrap();
    }
    cache.remove("t", "k2").unwrap();
    cache.compact().unwrap();
    assert_eq!(cache.get::<u16>("t", "k6"), Some(8980));
}

mod random {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::{lose_the_index, open};

    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u16),
        Remove(u8),
        Compact,
        ClearExpired,
        LoseIndex,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..12u8, any::<u16>()).prop_map(|(k, v)| Op::Set(k, v)),
            3 => (0..12u8).prop_map(Op::Remove),
            2 => Just(Op::Compact),
            1 => Just(Op::ClearExpired),
            1 => Just(Op::LoseIndex),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever was set, removed, compacted and rewritten, losing the index loses nothing
        /// and brings nothing back.
        #[test]
        fn losing_the_index_changes_nothing(ops in proptest::collection::vec(op(), 1..80)) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            // (A known race loses an entry in some sequences in release builds: see
            // `an_explicit_compaction_right_after_a_background_one_keeps_every_entry`.)
            let small = |d| {
                tokcache::Cache::builder(d)
                    .compact_after_records(5)
                    .rewrite_segments_with_dead_bytes(0)
                    .open()
                    .unwrap()
            };
            let mut cache = small(dir);
            let mut model: HashMap<u8, u16> = HashMap::new();
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        cache.set("t", &format!("k{k}"), &v).unwrap();
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        let was = cache.remove("t", &format!("k{k}")).unwrap();
                        prop_assert_eq!(was, model.remove(&k).is_some());
                    }
                    Op::Compact => {
                        cache.compact().unwrap();
                    }
                    Op::ClearExpired => {
                        cache.clear_expired().unwrap();
                    }
                    Op::LoseIndex => {
                        drop(cache);
                        lose_the_index(dir);
                        cache = small(dir);
                    }
                }
                for k in 0..12u8 {
                    prop_assert_eq!(cache.get::<u16>("t", &format!("k{k}")), model.get(&k).copied());
                }
            }
            drop(cache);
            lose_the_index(dir);
            let cache = open(dir, 0);
            for k in 0..12u8 {
                prop_assert_eq!(cache.get::<u16>("t", &format!("k{k}")), model.get(&k).copied());
            }
        }
    }
}
