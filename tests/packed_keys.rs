//! Keys of 512 bytes or more are stored packed (compressed, behind an identity; docs/format.md,
//! "Packed keys"): every read path finds them, near misses miss, export gives the text back
//! byte for byte, and verify, compaction and a rebuild from the segments keep them.

mod common;

use tokcache::{Cache, ReadOptions, TOKEN_COUNT, logical_name, token_count_key};

/// Prose: this repository's README, ASCII only, repeated as needed (real text, which is
/// what long keys are: messages).
fn prose(len: usize, from: usize) -> String {
    let readme: String = include_str!("../README.md")
        .chars()
        .filter(char::is_ascii)
        .collect();
    readme.chars().cycle().skip(from).take(len).collect()
}

const LENGTHS: [usize; 7] = [100, 511, 512, 513, 2_000, 8_000, 200_000];

fn texts() -> Vec<String> {
    LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &len)| prose(len, i * 997))
        .collect()
}

/// Every read path, from a handle that did not write (its lookups go to the shared files).
fn check_all(dir: &std::path::Path, texts: &[String]) {
    let cache = Cache::builder(dir).max_ram_entries(0).open().unwrap();
    for (i, t) in texts.iter().enumerate() {
        let n = i as u64;
        assert_eq!(
            cache.get_token_count("cl100k_base", t),
            Some(n),
            "{} bytes",
            t.len()
        );
        let key = token_count_key("cl100k_base", t);
        assert_eq!(cache.get::<u64>(TOKEN_COUNT, &key), Some(n));
        assert_eq!(cache.get::<String>("doc", t).as_deref(), Some(&t[..10]));
        let ids = cache.get_tokens("ids", t).unwrap();
        assert_eq!(ids.as_tokens(), Some(&[n as u32, 7][..]));
        let v = cache
            .read("doc", t, ReadOptions::default().borrowed())
            .unwrap();
        assert_eq!(
            v.and_then(|v| v.to_json_string()),
            Some(format!("{:?}", &t[..10]))
        );
        // Near misses: one byte changed, one byte less, one more, another prefix.
        let mut other = t.clone().into_bytes();
        other[t.len() / 2] ^= 1;
        let other = String::from_utf8(other).unwrap();
        for miss in [&other[..], &t[..t.len() - 1], &format!("{t} ")] {
            assert_eq!(cache.get::<String>("doc", miss), None, "{} bytes", t.len());
            assert_eq!(cache.get_token_count("cl100k_base", miss), None);
        }
        assert_eq!(cache.get::<String>("ids", t), None); // token ids, not a string
        assert_eq!(cache.get_token_count("o200k_base", t), None);
    }
    let many = cache.get_many::<String>("doc", texts);
    assert!(
        many.iter()
            .zip(texts)
            .all(|(v, t)| v.as_deref() == Some(&t[..10]))
    );
}

#[test]
fn long_keys_are_stored_compressed_and_found_by_every_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let texts = texts();
    let cache = Cache::builder(dir).max_disk_bytes(0).open().unwrap();
    for (i, t) in texts.iter().enumerate() {
        cache.set_token_count("cl100k_base", t, i as u64).unwrap();
        cache.set("doc", t, &t[..10]).unwrap();
        cache.set_tokens("ids", t, &[i as u32, 7]).unwrap();
    }
    check_all(dir, &texts);

    // Stored smaller than the text: the records of the long keys take less than 3/4 of it.
    let key_bytes: usize = texts.iter().map(|t| 3 * t.len()).sum();
    let stats = cache.get_stats();
    assert!(
        (stats.segment_bytes as usize) < key_bytes * 3 / 4,
        "{} bytes of segments for {key_bytes} bytes of keys",
        stats.segment_bytes
    );

    // Export: the text of every key, byte for byte, under its logical name.
    let mut exported = Vec::new();
    cache.for_each_entry(|e| {
        let json: serde_json::Value = serde_json::from_str(&e.to_original_json().unwrap()).unwrap();
        assert_eq!(json["key"].as_str(), Some(e.key()));
        assert_eq!(e.logical_name(), logical_name(e.prefix(), e.key()));
        exported.push((e.prefix().to_string(), e.key().to_string()));
    });
    assert_eq!(exported.len(), 3 * texts.len());
    for t in &texts {
        for (prefix, key) in [
            ("doc", t.clone()),
            ("ids", t.clone()),
            (TOKEN_COUNT, token_count_key("cl100k_base", t)),
        ] {
            assert!(
                exported.contains(&(prefix.to_string(), key)),
                "{prefix}: {} bytes",
                t.len()
            );
        }
    }

    // Overwrites and removals of long keys supersede their packed records.
    let long = &texts[4];
    cache.set("doc", long, "changed").unwrap();
    assert!(cache.remove("ids", long).unwrap());
    let report = cache.compact().unwrap();
    assert!(report.generation > 0);
    let report = cache.verify(|_| {});
    assert!(report.is_sound(), "{:?}", report.problems);
    let other = Cache::open(dir).unwrap();
    assert_eq!(other.get::<String>("doc", long).as_deref(), Some("changed"));
    assert!(other.get_tokens("ids", long).is_none());
    cache.set("doc", long, &long[..10]).unwrap();
    cache.set_tokens("ids", long, &[4, 7]).unwrap();
    drop((cache, other));

    // A rebuild from the segments alone (every index deleted) hashes the unpacked keys.
    for index in common::files_with(dir, "tki") {
        std::fs::remove_file(index).unwrap();
    }
    check_all(dir, &texts);
    let again = Cache::open(dir).unwrap();
    assert!(again.verify(|_| {}).is_sound());
}

#[test]
fn a_damaged_packed_key_is_a_miss_and_a_problem_never_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = prose(4000, 0);
    {
        let cache = Cache::open(dir).unwrap();
        cache.set("doc", &text, &1u64).unwrap();
        cache.flush().unwrap();
    }
    // The compressed bytes sit at the end of the record, past the 32-byte header, the value
    // (8 bytes) and the 21-byte identity: damage one of them.
    let seg = common::files_with(dir, "tks").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + 8 + 21 + 100] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let cache = Cache::open(dir).unwrap();
    // The identity still matches: a lookup compares it, not the text.
    assert_eq!(cache.get::<u64>("doc", &text), Some(1));
    // Export leaves the damaged key out rather than write a wrong one; verify reports it.
    let mut exported = 0;
    cache.for_each_entry(|_| exported += 1);
    assert_eq!(exported, 0);
    assert!(!cache.verify(|_| {}).is_sound());
}
