//! Keys the size of chat messages: their values are right wherever they are read from, and the
//! RAM tier's memory stays bounded whatever the keys' length (`max_ram_bytes`; long keys whose
//! records are on disk are read from the mapping, not copied).

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
