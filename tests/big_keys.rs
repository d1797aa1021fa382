//! Keys the size of chat messages: their values are right wherever they are read from, and the
//! RAM tier's memory stays bounded whatever the keys' length (`max_ram_bytes`; long keys whose
//! records are on disk are read from the mapping, not copied).

mod common;

use common::child_spec;

use tokcache::{Cache, Storage};

fn message(i: usize, len: usize) -> String {
    let mut s = format!("tokenizer:cl100k_base:{i}:");
    while s.len() < len {
        s.push_str(&format!("word{} ", s.len() % 97));
    }
    s
}

#[test]
fn long_keys_are_served_from_the_mapping_not_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let keys: Vec<String> = (0..60).map(|i| message(i, 100_000)).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.set("token_count", k, &i).unwrap();
    }
    for round in 0..2 {
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                cache.get::<usize>("token_count", k),
                Some(i),
                "round {round}"
            );
        }
    }
    // A key that differs from a stored one in its last byte only is a miss.
    let mut near = keys[3].clone();
    near.pop();
    near.push('!');
    assert_eq!(cache.get::<usize>("token_count", &near), None);
    let s = cache.get_stats();
    assert_eq!(s.ram_entries, 0, "long keys copied into RAM");
    assert_eq!((s.disk_hits, s.ram_hits), (120, 0));
    // An overwrite is seen at once, by this handle and another.
    cache.set("token_count", &keys[5], &500usize).unwrap();
    assert_eq!(cache.get::<usize>("token_count", &keys[5]), Some(500));
    let other = Cache::open(tmp.path()).unwrap();
    assert_eq!(other.get::<usize>("token_count", &keys[5]), Some(500));
    // Short keys still go into the RAM tier.
    cache.set("token_count", "short", &1usize).unwrap();
    assert_eq!(cache.get::<usize>("token_count", "short"), Some(1));
    assert_eq!(cache.get_stats().ram_entries, 1);
}

/// Private memory (RssAnon) of this process, in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim();
    kb.parse::<u64>().unwrap() * 1024
}

/// A new process that opens a cache of 8 KB keys and reads 1000 of them (its RAM tier, of the
/// default 1000 entries, then full, though long keys stay out of it) gains a few MB of private
/// memory at most: neither the keys nor a table sized for the log's bytes. (The table of
/// records since the last index was once sized for one record per 96 bytes: 7.6 MB here.)
#[test]
fn a_reader_of_long_keys_holds_little_private_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    for i in 0..4000usize {
        cache.set("token_count", &message(i, 8192), &i).unwrap();
    }
    drop(cache);
    let child = common::spawn_child(
        "reader_of_long_keys",
        "TOKCACHE_LONG_READER",
        tmp.path().to_str().unwrap(),
    );
    let out = common::expect_success(child);
    let gained: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("gained "))
        .unwrap_or_else(|| panic!("child printed: {out}"))
        .parse()
        .unwrap();
    assert!(gained < 4 << 20, "a reader gained {gained} bytes");
}

#[test]
#[ignore = "child process of a_reader_of_long_keys_holds_little_private_memory"]
fn reader_of_long_keys() {
    let dir = child_spec("TOKCACHE_LONG_READER");
    let keys: Vec<String> = (0..1000).map(|i| message(i, 8192)).collect();
    let before = rss_anon();
    let cache = Cache::open(&dir).unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cache.get::<usize>("token_count", k), Some(i));
    }
    println!("gained {}", rss_anon().saturating_sub(before));
}

#[test]
fn a_ram_only_cache_keeps_within_its_byte_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let (cache, why) = Cache::builder(&file)
        .max_ram_bytes(1 << 20)
        .open_or_ram_only();
    assert!(why.is_some());
    assert_eq!(cache.storage(), Storage::RamOnly);
    let keys: Vec<String> = (0..60).map(|i| message(i, 100_000)).collect();
    for (i, k) in keys.iter().enumerate() {
        cache.set("token_count", k, &i).unwrap();
        // What it keeps is right, and the newest one is kept.
        assert_eq!(cache.get::<usize>("token_count", k), Some(i));
    }
    let kept = cache.get_stats().ram_entries;
    assert!(
        (1..=10).contains(&kept),
        "{kept} entries of 100 KB in 1 MiB"
    );
    let found = keys
        .iter()
        .enumerate()
        .filter(|(i, k)| {
            let v = cache.get::<usize>("token_count", k);
            assert!(v.is_none() || v == Some(*i));
            v.is_some()
        })
        .count();
    assert_eq!(found as u64, kept);
    // An entry over the bound is not kept at all.
    cache
        .set("token_count", &message(99, 2 << 20), &1usize)
        .unwrap();
    assert_eq!(
        cache.get::<usize>("token_count", &message(99, 2 << 20)),
        None
    );
}

/// The token-count calls hash and compare `tokenizer:{encoding}:{text}` in parts: the same
/// entry, logical name and exported bytes as the joined key.
#[test]
fn token_counts_by_encoding_and_text_are_the_joined_keys_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    for (i, len) in [0usize, 5, 200, 5000, 300_000].into_iter().enumerate() {
        let text = message(i, len);
        let joined = tokcache::token_count_key("cl100k_base", &text);
        cache
            .set_token_count("cl100k_base", &text, 7 + i as u64)
            .unwrap();
        assert_eq!(
            cache.get::<u64>(tokcache::TOKEN_COUNT, &joined),
            Some(7 + i as u64)
        );
        cache
            .set(tokcache::TOKEN_COUNT, &joined, &(100 + i as u64))
            .unwrap();
        assert_eq!(
            cache.get_token_count("cl100k_base", &text),
            Some(100 + i as u64)
        );
        let other = Cache::open(tmp.path()).unwrap();
        assert_eq!(
            other.get_token_count("cl100k_base", &text),
            Some(100 + i as u64)
        );
        assert_eq!(cache.get_token_count("o200k_base", &text), None);
        let mut near = text.clone();
        near.push(' ');
        assert_eq!(cache.get_token_count("cl100k_base", &near), None);
    }
    // Exported as the original wrote the joined key.
    let text = message(9, 3000);
    cache.set_token_count("cl100k_base", &text, 42).unwrap();
    let joined = tokcache::token_count_key("cl100k_base", &text);
    let mut found = 0;
    cache.for_each_entry(|e| {
        if e.key() == joined {
            found += 1;
            assert_eq!(
                e.logical_name(),
                tokcache::logical_name("token_count", &joined)
            );
            let json: serde_json::Value =
                serde_json::from_str(&e.to_original_json().unwrap()).unwrap();
            assert_eq!(json["key"], joined.as_str());
            assert_eq!(json["value"], 42);
        }
    });
    assert_eq!(found, 1);
    // Computed once, then cached.
    let mut calls = 0;
    for _ in 0..3 {
        let n = cache
            .token_count_or_insert_with("p50k_base", &text, || {
                calls += 1;
                11
            })
            .unwrap();
        assert_eq!(n, 11);
    }
    assert_eq!(calls, 1);
    // The original's key does not say where the encoding ends: these are one entry, as they
    // were for the original.
    cache.set_token_count("a:b", "c", 1).unwrap();
    assert_eq!(cache.get_token_count("a", "b:c"), Some(1));
}
