//! The original's five test scenarios, on tokcache.

use std::sync::Arc;
use std::time::Duration;

use tokcache::{Cache, ManualClock, Storage};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn basic_get_set_and_reopen() {
    let dir = temp();
    {
        let cache = Cache::open(dir.path()).unwrap();
        assert_eq!(cache.storage(), Storage::Disk);
        cache.set("test", "key1", &42u64).unwrap();
        cache.set("test", "key2", "hello").unwrap();
        cache
            .set("test", "key3", &serde_json::json!({"a": [1, 2.5, "ü"]}))
            .unwrap();
        assert_eq!(cache.get::<u64>("test", "key1"), Some(42));
        assert_eq!(
            cache.get::<String>("test", "key2").as_deref(),
            Some("hello")
        );
        assert_eq!(cache.get::<u64>("test", "missing"), None);
        cache.flush().unwrap();
    }
    let cache = Cache::open(dir.path()).unwrap();
    assert_eq!(cache.get::<u64>("test", "key1"), Some(42));
    assert_eq!(
        cache.get::<String>("test", "key2").as_deref(),
        Some("hello")
    );
    assert_eq!(
        cache.get::<serde_json::Value>("test", "key3"),
        Some(serde_json::json!({"a": [1, 2.5, "ü"]}))
    );
    assert_eq!(
        cache.get::<u64>("other", "key1"),
        None,
        "prefixes are separate"
    );
    let s = cache.get_stats();
    assert_eq!((s.disk_hits, s.misses, s.disk_files), (3, 1, 3));
    assert_eq!(s.hit_rate_percent, 75.0);
}

#[test]
fn expiry_by_timestamp_with_fractional_hours() {
    let dir = temp();
    let clock = Arc::new(ManualClock::new());
    let cache = Cache::builder(dir.path())
        .ttl_hours(0.001) // 3.6 s, as the original's test
        .clock(clock.clone())
        .open()
        .unwrap();
    cache.set("test", "k", &1u64).unwrap();
    clock.advance(3.0);
    assert_eq!(cache.get::<u64>("test", "k"), Some(1));
    clock.advance(1.0);
    assert_eq!(cache.get::<u64>("test", "k"), None, "expired in RAM");
    let reopened = Cache::builder(dir.path())
        .ttl(Duration::from_secs(3))
        .clock(clock.clone())
        .open()
        .unwrap();
    assert_eq!(reopened.get::<u64>("test", "k"), None, "expired on disk");
    let longer = Cache::builder(dir.path())
        .ttl(Duration::from_secs(60))
        .clock(clock)
        .open()
        .unwrap();
    assert_eq!(
        longer.get::<u64>("test", "k"),
        Some(1),
        "age is measured, not deleted"
    );
}

#[test]
fn ram_eviction_keeps_disk_intact() {
    let dir = temp();
    let cache = Cache::builder(dir.path())
        .max_ram_entries(3)
        .open()
        .unwrap();
    for i in 0..5u64 {
        cache.set("test", &format!("k{i}"), &i).unwrap();
    }
    let s = cache.get_stats();
    assert_eq!(
        (s.ram_entries, s.evictions, s.disk_files, s.saves),
        (3, 2, 5, 5)
    );
    for i in 0..5u64 {
        assert_eq!(cache.get::<u64>("test", &format!("k{i}")), Some(i));
    }
    let s = cache.get_stats();
    assert_eq!(s.ram_entries, 3);
    assert!(
        s.disk_hits >= 2,
        "evicted entries came back from disk: {s:?}"
    );
}

#[test]
fn token_counting_with_a_real_tokenizer() {
    let dir = temp();
    let bpe = tiktoken_rs::cl100k_base().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let text = "Persistent caches avoid re-tokenizing the same prompt on every turn.";
    let key = tokcache::token_count_key("cl100k_base", text);
    let mut computed = 0;
    let mut count = || {
        computed += 1;
        bpe.encode_with_special_tokens(text).len() as u64
    };
    let first = cache
        .get_or_insert_with(tokcache::TOKEN_COUNT, &key, &mut count)
        .unwrap();
    let second = cache
        .get_or_insert_with(tokcache::TOKEN_COUNT, &key, &mut count)
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(computed, 1);
    assert_eq!(first, bpe.encode_with_special_tokens(text).len() as u64);
    assert!(first > 5);

    let ids: Vec<u32> = bpe.encode_with_special_tokens(text);
    cache.set_tokens("tokens", &key, &ids).unwrap();
    drop(cache);
    let cache = Cache::open(dir.path()).unwrap();
    let borrowed = cache.get_tokens("tokens", &key).unwrap();
    assert_eq!(borrowed.as_tokens().unwrap(), &ids[..]);
    assert_eq!(bpe.decode(borrowed.as_tokens().unwrap()).unwrap(), text);
    assert_eq!(
        cache.get_ref(tokcache::TOKEN_COUNT, &key).unwrap().as_i64(),
        Some(first as i64)
    );
}

#[test]
fn clear_expired_and_clear_all() {
    let dir = temp();
    let clock = Arc::new(ManualClock::new());
    let cache = Cache::builder(dir.path())
        .ttl(Duration::from_secs(10))
        .clock(clock.clone())
        .open()
        .unwrap();
    for i in 0..10u64 {
        cache.set("test", &format!("old{i}"), &i).unwrap();
    }
    clock.advance(20.0);
    for i in 0..5u64 {
        cache.set("test", &format!("new{i}"), &i).unwrap();
    }
    std::fs::write(dir.path().join("settings.json"), "{}").unwrap();
    let before = cache.get_stats();
    assert_eq!(before.disk_files, 15);
    assert_eq!(cache.clear_expired().unwrap(), 10);
    let s = cache.get_stats();
    assert_eq!(s.disk_files, 5);
    assert!(
        s.segment_bytes * 2 < before.segment_bytes,
        "space reclaimed: {} -> {}",
        before.segment_bytes,
        s.segment_bytes
    );
    assert_eq!(s.dead_bytes, 0);
    assert_eq!(cache.get::<u64>("test", "new3"), Some(3));
    assert_eq!(cache.get::<u64>("test", "old3"), None);

    cache.clear_all().unwrap();
    assert_eq!(cache.get::<u64>("test", "new3"), None);
    let s = cache.get_stats();
    assert_eq!((s.disk_files, s.ram_entries), (0, 0));
    assert!(
        dir.path().join("settings.json").exists(),
        "other programs' files are not ours"
    );
    cache.set("test", "again", &1u64).unwrap();
    assert_eq!(
        Cache::open(dir.path()).unwrap().get::<u64>("test", "again"),
        Some(1)
    );
}

#[test]
fn get_or_insert_with_computes_once_across_threads_and_may_nest() {
    let dir = temp();
    let cache = std::sync::Arc::new(Cache::open(dir.path()).unwrap());
    let computed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (cache, computed) = (cache.clone(), computed.clone());
            std::thread::spawn(move || {
                cache
                    .get_or_insert_with("test", "slow", || {
                        computed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        7u64
                    })
                    .unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 7);
    }
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A computation that itself memoizes other keys (the original's decorator on recursive
    // functions) must not deadlock, whatever the keys' hashes.
    let (tx, rx) = std::sync::mpsc::channel();
    let c = cache.clone();
    std::thread::spawn(move || {
        for i in 0..300u64 {
            let outer = c
                .get_or_insert_with("test", &format!("outer{i}"), || {
                    c.get_or_insert_with("test", &format!("inner{i}"), || i * 2)
                        .unwrap()
                        + 1
                })
                .unwrap();
            assert_eq!(outer, i * 2 + 1);
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("nested get_or_insert_with deadlocked");
}
