//! The prefix table (docs/format.md, "Prefix table"): records name an interned prefix by its
//! number in `prefixes.tkp`; every process reads the same numbers; a number is never given
//! twice, even when the table is lost; a prefix past the table's 256 is stored in full.

use std::path::Path;

mod common;

use common::{child_spec, expect_success, spawn_child, value_of};
use tokcache::Cache;

/// Every segment's bytes, end to end.
fn segment_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tks") {
            all.extend(std::fs::read(p).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// (prefix, key) of every entry `for_each_entry` lists, sorted.
fn listed(cache: &Cache) -> Vec<(String, String)> {
    let mut all = Vec::new();
    cache.for_each_entry(|e| all.push((e.prefix().to_string(), e.key().to_string())));
    all.sort();
    all
}

#[test]
#[ignore = "entry point of a process that adds a prefix"]
fn prefix_adder() {
    let dir = child_spec("TOKCACHE_PREFIX_ADDER");
    let cache = Cache::open(dir).unwrap();
    assert_eq!(cache.get::<u64>("token_count", "k0"), Some(value_of("k0")));
    for i in 0..50 {
        let k = format!("k{i}");
        cache.set("added_by_a_child", &k, &value_of(&k)).unwrap();
    }
}

#[test]
fn records_hold_prefix_numbers_that_every_process_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = Cache::open(dir).unwrap();
    for i in 0..50 {
        let k = format!("k{i}");
        cache.set("token_count", &k, &value_of(&k)).unwrap();
        cache.set_tokens("tokens", &k, &[1, 2, i]).unwrap();
    }
    let segments = segment_bytes(dir);
    assert!(contains(&segments, "k49"));
    assert!(
        !contains(&segments, "token_count") && !contains(&segments, "tokens"),
        "a record holds its prefix's text"
    );
    let table = std::fs::read(dir.join("prefixes.tkp")).unwrap();
    assert!(contains(&table, "token_count") && contains(&table, "tokens"));

    // A process started after this one opened adds a prefix; this one reads its records
    // (learning the new number from the file) and theirs stay right after compactions.
    expect_success(spawn_child(
        "prefix_adder",
        "TOKCACHE_PREFIX_ADDER",
        dir.to_str().unwrap(),
    ));
    for round in 0..2 {
        for i in 0..50 {
            let k = format!("k{i}");
            let v = value_of(&k);
            assert_eq!(cache.get::<u64>("added_by_a_child", &k), Some(v), "{round}");
            assert_eq!(cache.get::<u64>("token_count", &k), Some(v), "{round}");
            assert_eq!(
                cache.get_tokens("tokens", &k).unwrap().as_tokens(),
                Some(&[1, 2, i][..])
            );
            assert_eq!(cache.get::<u64>("tokens_", &k), None);
        }
        assert_eq!(listed(&cache).len(), 150);
        let report = cache.verify(|_| ());
        assert!(report.problems.is_empty(), "{report:?}");
        cache.compact().unwrap();
    }
}

#[test]
fn a_lost_table_loses_its_entries_but_never_gives_a_number_a_second_meaning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = Cache::builder(dir).max_ram_entries(0).open().unwrap();
    cache.set("token_count", "in the index", &1u64).unwrap();
    cache.compact().unwrap();
    cache.set("token_count", "in the log", &2u64).unwrap();
    drop(cache);
    std::fs::remove_file(dir.join("prefixes.tkp")).unwrap();

    let cache = Cache::builder(dir).max_ram_entries(0).open().unwrap();
    // Their prefix is unknown: misses, not values of another prefix.
    assert_eq!(cache.get::<u64>("token_count", "in the index"), None);
    assert_eq!(cache.get::<u64>("token_count", "in the log"), None);
    // A new prefix must not take number 0, which records already hold.
    cache.set("scores", "in the log", &3u64).unwrap();
    assert_eq!(cache.get::<u64>("scores", "in the log"), Some(3));
    assert_eq!(
        listed(&cache),
        [("scores".to_string(), "in the log".to_string())]
    );
    let report = cache.verify(|_| ());
    assert!(
        report.problems.iter().any(|p| p.contains("prefixes.tkp")),
        "{report:?}"
    );
    // The lost entries can be set again (stored with their prefix's text): the new record
    // supersedes the unreadable one, in the log and through compactions.
    cache.set("token_count", "in the log", &4u64).unwrap();
    cache.set("token_count", "in the index", &5u64).unwrap();
    for _ in 0..2 {
        assert_eq!(cache.get::<u64>("token_count", "in the log"), Some(4));
        assert_eq!(cache.get::<u64>("token_count", "in the index"), Some(5));
        assert_eq!(cache.get::<u64>("scores", "in the log"), Some(3));
        assert_eq!(listed(&cache).len(), 3);
        cache.compact().unwrap();
    }
    drop(cache);
    let cache = Cache::open(dir).unwrap();
    assert_eq!(cache.get::<u64>("token_count", "in the index"), Some(5));
    assert_eq!(cache.get::<u64>("scores", "in the log"), Some(3));
}

#[test]
fn a_damaged_table_makes_misses_of_the_prefixes_it_no_longer_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = Cache::open(dir).unwrap();
    cache.set("first", "k", &1u64).unwrap();
    cache.set("second", "k", &2u64).unwrap();
    drop(cache);
    let path = dir.join("prefixes.tkp");
    let mut table = std::fs::read(&path).unwrap();
    let at = table.windows(6).position(|w| w == b"second").unwrap();
    table[at] ^= 0x20;
    std::fs::write(&path, &table).unwrap();

    let cache = Cache::open(dir).unwrap();
    assert_eq!(cache.get::<u64>("first", "k"), Some(1));
    assert_eq!(cache.get::<u64>("second", "k"), None);
    assert_eq!(cache.get::<u64>("Second", "k"), None);
    cache.set("third", "k", &3u64).unwrap();
    assert_eq!(cache.get::<u64>("third", "k"), Some(3));
    let report = cache.verify(|_| ());
    assert!(
        report.problems.iter().any(|p| p.contains("prefixes.tkp")),
        "{report:?}"
    );
    assert_eq!(
        table,
        std::fs::read(&path).unwrap(),
        "the damaged table grew"
    );
}

#[test]
fn prefixes_past_the_tables_256_are_stored_in_full() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    for i in 0..300u64 {
        cache.set(&format!("p{i}"), "k", &i).unwrap();
    }
    let segments = segment_bytes(tmp.path());
    assert!(!contains(&segments, "p255k") && contains(&segments, "p256k"));
    cache.compact().unwrap();
    drop(cache);
    let cache = Cache::open(tmp.path()).unwrap();
    for i in 0..300u64 {
        assert_eq!(cache.get::<u64>(&format!("p{i}"), "k"), Some(i));
    }
    assert_eq!(listed(&cache).len(), 300);
}
