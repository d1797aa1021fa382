//! Damaged files: every file of a cache truncated, extended and bit-flipped. Opening and reading
//! never panic and never return a wrong value; the cache keeps working; verify reports damage.

use std::path::Path;

mod common;

use common::Rng;
use tokcache::Cache;

const KEYS: usize = 400;

fn value_of(key: &str) -> String {
    format!("v:{}:{}", key.len(), key.chars().rev().collect::<String>())
}

fn key(i: usize) -> String {
    format!("tokenizer:cl100k_base:{i}-{}", "p".repeat(i % 50))
}

/// A cache with entries in compacted segments, a rewritten segment, a recent index and a live
/// tail.
fn build(dir: &Path) {
    // Compactions inline, so that which ones write recent indexes does not depend on timing.
    let cache = Cache::builder(dir)
        .compact_after_records(150)
        .rewrite_segments_with_dead_bytes(0)
        .compact_in_background(false)
        .open()
        .unwrap();
    for round in 0..2 {
        for i in 0..KEYS {
            if round == 1 && i % 3 == 0 {
                continue;
            }
            cache.set("test", &key(i), &value_of(&key(i))).unwrap();
        }
        if round == 0 {
            // Seals the log (clear_expired always does; nothing expires): the overwrites of
            // round 1 make it mostly dead, and a later compaction rewrites it.
            cache.clear_expired().unwrap();
        }
    }
    for i in (0..KEYS).step_by(7) {
        cache.remove("test", &key(i)).unwrap();
    }
    // Overwrites of ten keys (with the same values): the compaction they set off finds few
    // keys in the log and writes a recent index, which is damaged in turn below.
    for n in 0..150 {
        let i = [1, 2, 3, 4, 5, 6, 8, 9, 10, 11][n % 10];
        cache.set("test", &key(i), &value_of(&key(i))).unwrap();
    }
    cache.flush().unwrap();
}

/// Reads every key: each answer must be a miss or the right value. Returns the hits.
fn check_no_wrong_values(dir: &Path) -> usize {
    let cache = Cache::open(dir).unwrap();
    // A batch first (the RAM tier is empty), then each key alone: the same answers.
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let many = cache.get_many::<String>("test", &keys);
    let mut hits = 0;
    for (i, in_batch) in (0..KEYS).zip(many) {
        let got = cache.get::<String>("test", &key(i));
        assert_eq!(in_batch, got, "get_many and get differ on key {i}");
        if let Some(v) = got {
            assert_eq!(v, value_of(&key(i)), "wrong value for key {i}");
            hits += 1;
        }
    }
    cache.set("test", "after-damage", "works").unwrap();
    assert_eq!(
        cache.get::<String>("test", "after-damage").as_deref(),
        Some("works")
    );
    drop(cache);
    assert_eq!(
        Cache::open(dir)
            .unwrap()
            .get::<String>("test", "after-damage")
            .as_deref(),
        Some("works")
    );
    hits
}

fn our_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn damaged_copy(src: &Path, file: &str, damage: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in our_files(src) {
        std::fs::copy(src.join(&name), tmp.path().join(&name)).unwrap();
    }
    let path = tmp.path().join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    tmp
}

#[test]
fn intact_cache_is_sound() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let cache = Cache::open(tmp.path()).unwrap();
    let report = cache.verify(|_| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.records_checked > KEYS as u64);
    let expected = (0..KEYS).filter(|i| i % 7 != 0).count();
    assert_eq!(check_no_wrong_values(tmp.path()), expected);
}

#[test]
fn every_file_truncated_extended_and_flipped() {
    let src = tempfile::tempdir().unwrap();
    build(src.path());
    let files = our_files(src.path());
    assert!(
        files.iter().filter(|f| f.ends_with(".tki")).count() == 2
            && files.iter().filter(|f| f.ends_with(".tks")).count() >= 2,
        "a full and a recent index, two segments: {files:?}"
    );
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut runs = 0;
    for file in &files {
        let len = std::fs::metadata(src.path().join(file)).unwrap().len() as usize;
        let cuts = [0, 1, len / 3, len / 2, len.saturating_sub(1)];
        for cut in cuts {
            let tmp = damaged_copy(src.path(), file, |b| b.truncate(cut));
            check_no_wrong_values(tmp.path());
            runs += 1;
        }
        let tmp = damaged_copy(src.path(), file, |b| {
            b.extend((0..4099).map(|i| (i * 7) as u8));
        });
        check_no_wrong_values(tmp.path());
        runs += 1;
        for _ in 0..12 {
            let flips = 1 + rng.next() as usize % 4;
            let seed = rng.next();
            let tmp = damaged_copy(src.path(), file, |b| {
                let mut r = Rng(seed | 1);
                for _ in 0..flips {
                    if !b.is_empty() {
                        let at = r.next() as usize % b.len();
                        b[at] ^= 1 << (r.next() % 8);
                    }
                }
            });
            check_no_wrong_values(tmp.path());
            runs += 1;
        }
    }
    assert!(runs > 50);
}

#[test]
fn verify_reports_damage_and_recovery_keeps_the_intact_entries() {
    let src = tempfile::tempdir().unwrap();
    build(src.path());
    let seg = our_files(src.path())
        .into_iter()
        .find(|f| f.ends_with(".tks"))
        .unwrap();
    // A flipped byte in the first record's header of the oldest segment.
    let tmp = damaged_copy(src.path(), &seg, |b| b[10] ^= 0xff);
    let cache = Cache::open(tmp.path()).unwrap();
    let report = cache.verify(|_| {});
    assert!(!report.problems.is_empty(), "damage went unreported");
    drop(cache);
    let hits = check_no_wrong_values(tmp.path());
    assert!(
        hits > KEYS / 2,
        "only {hits} entries survived one flipped byte"
    );

    // A damaged index is rebuilt from the segments: every entry survives.
    let index = our_files(src.path())
        .into_iter()
        .find(|f| f.ends_with(".tki"))
        .unwrap();
    let expected = (0..KEYS).filter(|i| i % 7 != 0).count();
    // Its root and lists (where the tail starts, which segments): checked on every open, so
    // rebuilt at once. (Before that check, a damaged `log_start` could hide what was set
    // after the damage.)
    let tmp = damaged_copy(src.path(), &index, |b| b[70] ^= 0x55);
    assert_eq!(check_no_wrong_values(tmp.path()), expected);
    let cache = Cache::open(tmp.path()).unwrap();
    let report = cache.verify(|_| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop(cache);
    // A slot: the whole index's checksum is not read on open (O(1) open); compaction reads
    // it and rebuilds.
    let tmp = damaged_copy(src.path(), &index, |b| {
        let n = b.len();
        b[n / 2] ^= 0x55;
    });
    let hits = check_no_wrong_values(tmp.path());
    assert!(hits >= expected - 2, "{hits} of {expected}");
    let cache = Cache::open(tmp.path()).unwrap();
    assert!(
        !cache.verify(|_| {}).problems.is_empty(),
        "verify sees the damaged index"
    );
    cache.compact().unwrap();
    let report = cache.verify(|_| {});
    assert!(
        report.problems.is_empty(),
        "after repair: {:?}",
        report.problems
    );
    drop(cache);
    assert!(check_no_wrong_values(tmp.path()) >= expected);
}

mod arbitrary_files {
    use super::*;
    use proptest::prelude::*;

    fn source() -> &'static tempfile::TempDir {
        static SRC: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        SRC.get_or_init(|| {
            let src = tempfile::tempdir().unwrap();
            build(src.path());
            src
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Arbitrary bytes, or a valid file with arbitrary bytes spliced in, as each of the
        /// cache's files: opening, reading, writing and verifying never panic, and every value
        /// read is right.
        #[test]
        fn any_bytes_as_any_file(
            which in 0usize..8,
            whole in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..6000),
            at in any::<usize>(),
        ) {
            let files = our_files(source().path());
            let file = files[which % files.len()].clone();
            let tmp = damaged_copy(source().path(), &file, |b| {
                if whole || b.is_empty() {
                    *b = bytes.clone();
                } else {
                    let at = at % b.len();
                    let end = (at + bytes.len()).min(b.len());
                    b[at..end].copy_from_slice(&bytes[..end - at]);
                }
            });
            check_no_wrong_values(tmp.path());
            let _ = Cache::open(tmp.path()).unwrap().verify(|_| {});
        }
    }
}

#[test]
fn a_damaged_record_under_a_recent_index_is_a_miss_not_its_older_value() {
    // K = 1 is merged into the full index; K = 2 is then written and covered by a recent index
    // (100-record tail, a full merge only at 1/32 of 5000 entries). With the record of K = 2
    // damaged, K must read as a miss: the full index's K = 1 is an older value, not K's.
    let tmp = tempfile::tempdir().unwrap();
    let open = || {
        Cache::builder(tmp.path())
            .compact_after_records(100)
            .compact_in_background(false)
            .max_ram_entries(0)
            .open()
            .unwrap()
    };
    let cache = open();
    let k = "tokenizer:cl100k_base:the key whose newest record is damaged";
    cache.set("token_count", k, &1u64).unwrap();
    for i in 0..5000 {
        cache.set("token_count", &key(i), &(i as u64)).unwrap();
    }
    cache.compact().unwrap();
    cache.set("token_count", k, &2u64).unwrap();
    for i in 0..99 {
        cache.set("token_count", &key(i), &(i as u64 + 1)).unwrap();
    }
    assert_eq!(
        cache.get_stats().tail_records,
        0,
        "a recent index covers K = 2"
    );
    assert_eq!(cache.get::<u64>("token_count", k), Some(2));
    drop(cache);

    // The newest record of K: value (8 bytes), then the key (its prefix is interned: the
    // header holds its number); damage its value.
    let log = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tks"))
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes
        .windows(k.len())
        .rposition(|w| w == k.as_bytes())
        .unwrap();
    let value = at - 8;
    assert_eq!(bytes[value..value + 8], 2u64.to_le_bytes());
    bytes[value] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();

    let cache = open();
    assert_eq!(cache.get::<u64>("token_count", k), None);
    assert_eq!(cache.get::<u64>("token_count", &key(7)), Some(8));
    // A full merge keeps it so: the damaged record takes the older entry with it.
    cache.compact().unwrap();
    assert_eq!(cache.get::<u64>("token_count", k), None);
    assert_eq!(cache.get::<u64>("token_count", &key(7)), Some(8));
    cache.set("token_count", k, &3u64).unwrap();
    assert_eq!(cache.get::<u64>("token_count", k), Some(3));
}

#[test]
fn a_damaged_index_root_is_rebuilt_and_hides_nothing() {
    // The root of an index's archive (at its end) says where the tail starts and which
    // segment is the log: a flipped bit there once let a write made after the damage vanish
    // on the next open (bit 0 of byte 552 of a recent index). Each byte of it, flipped, and
    // each byte of the footer that says where the filter is (the file's last 32 bytes).
    let src = tempfile::tempdir().unwrap();
    build(src.path());
    for index in our_files(src.path())
        .into_iter()
        .filter(|f| f.ends_with(".tki"))
    {
        let bytes = std::fs::read(src.path().join(&index)).unwrap();
        let archive_end = 64 + u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
        let root = (64..archive_end).rev().take(128);
        for at in root.chain(bytes.len() - 32..bytes.len()) {
            let tmp = damaged_copy(src.path(), &index, |b| b[at] ^= 1);
            check_no_wrong_values(tmp.path());
        }
    }
}

#[test]
fn a_damaged_filter_makes_misses_never_wrong_values_and_compaction_repairs_it() {
    let src = tempfile::tempdir().unwrap();
    build(src.path());
    let expected = (0..KEYS).filter(|i| i % 7 != 0).count();
    assert_eq!(check_no_wrong_values(src.path()), expected);
    // The full index is the one with filter blocks (footer bytes 0..8); a recent one has none.
    let with_blocks: Vec<(String, usize, usize)> = our_files(src.path())
        .into_iter()
        .filter(|f| f.ends_with(".tki"))
        .filter_map(|f| {
            let b = std::fs::read(src.path().join(&f)).unwrap();
            let footer = b.len() - 32;
            let blocks = u64::from_le_bytes(b[footer..footer + 8].try_into().unwrap()) as usize;
            (blocks > 0).then_some((f, footer - blocks * 32, footer))
        })
        .collect();
    assert_eq!(with_blocks.len(), 1, "one full index with a filter");
    let (full, start, end) = with_blocks[0].clone();
    // Every bit cleared: keys that only the full index holds now read as misses to `get`
    // (so lookups do ask the filter), and nothing reads as another value. (`get_many` does
    // not ask the filter: it would find them.)
    let tmp = damaged_copy(src.path(), &full, |b| b[start..end].fill(0));
    let cache = Cache::open(tmp.path()).unwrap();
    let mut hits = 0;
    for i in 0..KEYS {
        if let Some(v) = cache.get::<String>("test", &key(i)) {
            assert_eq!(v, value_of(&key(i)), "wrong value for key {i}");
            hits += 1;
        }
    }
    assert!(
        hits < expected / 2,
        "{hits} of {expected} hits with an empty filter"
    );
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    for (i, v) in cache
        .get_many::<String>("test", &keys)
        .into_iter()
        .enumerate()
    {
        assert!(
            v.is_none_or(|v| v == value_of(&key(i))),
            "wrong value for key {i}"
        );
    }
    let problems = cache.verify(|_| {}).problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing from the index's filter")),
        "{problems:?}"
    );
    cache.compact().unwrap();
    let problems = cache.verify(|_| {}).problems;
    assert!(problems.is_empty(), "after repair: {problems:?}");
    drop(cache);
    assert_eq!(check_no_wrong_values(tmp.path()), expected);
}

/// A log whose tail was damaged (a machine crash) is never shrunk below the length other
/// processes were told about: a reader still holding a value borrowed from its map past the
/// damage reads it (a shrunk file would kill it with SIGBUS), after a writer appended past the
/// damage and a compaction gave the log's spare space back.
#[test]
fn a_damaged_log_is_never_shrunk_under_its_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let value = |i: usize| format!("{i}:{}", "x".repeat(1000 + i));
    let reader = Cache::builder(dir).max_ram_entries(0).open().unwrap();
    for i in 0..50 {
        reader.set("test", &format!("k{i}"), &value(i)).unwrap();
    }
    reader.flush().unwrap();
    // Borrowed from the log's map, 40 KB past where the damage will be.
    let borrowed = reader.get_ref("test", "k49").unwrap();
    let log = dir.join(
        our_files(dir)
            .into_iter()
            .find(|f| f.ends_with(".tks"))
            .unwrap(),
    );
    let mut bytes = std::fs::read(&log).unwrap();
    let last_key_end = find(&bytes, b"k49").unwrap() + 3;
    let damage = find(&bytes, b"\"10:xxx").unwrap() + 20;
    bytes[damage] ^= 0xff;
    write_in_place(&log, damage, bytes[damage]);

    let writer = Cache::open(dir).unwrap();
    assert_eq!(writer.get::<String>("test", "k9"), Some(value(9)));
    assert_eq!(
        writer.get::<String>("test", "k10"),
        None,
        "the damaged record"
    );
    writer.set("test", "after", &1u64).unwrap();
    writer.compact().unwrap();
    writer.set("test", "after 2", &2u64).unwrap();
    assert!(
        std::fs::metadata(&log).map_or(true, |m| m.len() >= last_key_end as u64),
        "the log was shrunk below its committed length"
    );
    assert_eq!(
        borrowed.as_json_str().map(str::len),
        Some(value(49).len() + 2)
    );
    assert_eq!(writer.get::<u64>("test", "after"), Some(1));
    assert_eq!(writer.get::<u64>("test", "after 2"), Some(2));
    assert_eq!(reader.get::<u64>("test", "after 2"), Some(2));
    for i in 0..50 {
        let got = reader.get::<String>("test", &format!("k{i}"));
        assert!(got.is_none() || got == Some(value(i)), "k{i}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes one byte at `at` without truncating or replacing the file (as a bit flip on disk).
fn write_in_place(path: &Path, at: usize, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[byte], at as u64).unwrap();
}
