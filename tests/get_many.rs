//! `get_many`: the same answers as `get`, key by key, wherever the entries are (full index,
//! recent index, tail, RAM tier), with expiry, removals, other handles' writes and counters.

use std::sync::Arc;

use serde_json::{Value, json};
use tokcache::{Cache, ManualClock, ReadOptions};

const NOW: f64 = 1_750_000_000.0;

fn key(i: u64) -> String {
    format!("tokenizer:cl100k_base:{i:039}")
}

/// A cache whose entries lie in a full index, a recent index over it and the tail at once.
fn layered(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Cache {
    let cache = Cache::builder(dir)
        .compact_after_records(100)
        .compact_in_background(false)
        .max_ram_entries(50)
        .ttl_hours(1.0)
        .clock(clock.clone())
        .open()
        .unwrap();
    for i in 0..6000 {
        cache.set("token_count", &key(i), &i).unwrap();
    }
    cache.compact().unwrap();
    // Fewer than 6000 / 32 records after the full index: compactions write recent indexes.
    for i in 0..150 {
        cache.set("token_count", &key(i), &(i + 1_000_000)).unwrap();
    }
    for i in 150..170 {
        cache.remove("token_count", &key(i)).unwrap();
    }
    cache
}

#[test]
fn answers_as_get_does_key_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(NOW));
    let cache = layered(tmp.path(), &clock);
    let s = cache.get_stats();
    assert!(s.recent_index_records > 0 && s.tail_records > 0, "{s:?}");
    // Older entries expire: written an hour and a half before the rest.
    clock.set(NOW - 5400.0);
    for i in 9000..9010 {
        cache.set("token_count", &key(i), &i).unwrap();
    }
    clock.set(NOW);
    // Other value kinds, and a value `u64` does not decode.
    cache.set("token_count", &key(9100), "text").unwrap();
    cache
        .set_tokens("token_count", &key(9101), &[1, 2, 3])
        .unwrap();

    let mut ids: Vec<u64> = (0..6000).step_by(7).collect();
    ids.extend(0..200); // overwritten in the log, removed, and some twice in one batch
    ids.extend([9000, 9005, 9100, 9101, 7_000_000, 0, 0]);
    let keys: Vec<String> = ids.iter().map(|&i| key(i)).collect();
    let want: Vec<Option<u64>> = ids
        .iter()
        .map(|&i| match i {
            0..150 => Some(i + 1_000_000),
            150..170 | 9000.. => None,
            _ => Some(i),
        })
        .collect();
    let before = cache.get_stats();
    let many = cache.get_many::<u64>("token_count", &keys);
    assert_eq!(many, want);
    let after = cache.get_stats();
    // As with `get`, an entry found whose value is not a `u64` (9100, 9101) counts as a hit.
    let hits = want.iter().filter(|v| v.is_some()).count() as u64 + 2;
    assert_eq!(
        (after.ram_hits + after.disk_hits) - (before.ram_hits + before.disk_hits),
        hits
    );
    assert_eq!(after.misses - before.misses, keys.len() as u64 - hits);
    for (k, in_batch) in keys.iter().zip(&many) {
        assert_eq!(&cache.get::<u64>("token_count", k), in_batch, "{k}");
    }
    // Values of any type, as `get` decodes them.
    let as_json = cache.get_many::<Value>("token_count", &[key(9100), key(9101), key(3)]);
    assert_eq!(
        as_json,
        [
            Some(json!("text")),
            Some(json!([1, 2, 3])),
            Some(json!(1_000_003))
        ]
    );
    // A second handle's writes are seen by the next batch.
    let other = Cache::builder(tmp.path())
        .clock(clock.clone())
        .open()
        .unwrap();
    other.set("token_count", &key(1), &5u64).unwrap();
    other.remove("token_count", &key(2)).unwrap();
    assert_eq!(
        cache.get_many::<u64>("token_count", &[key(1), key(2), key(4)]),
        [Some(5), None, Some(1_000_004)]
    );
}

#[test]
fn empty_batches_and_bad_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    cache.set("token_count", "a", &1u64).unwrap();
    let none: [&str; 0] = [];
    assert!(cache.get_many::<u64>("token_count", &none).is_empty());
    assert_eq!(
        cache.get_many::<u64>("bad/prefix", &["a", "b"]),
        [None, None]
    );
    assert_eq!(
        cache.get_many::<u64>("token_count", &["a", "b"]),
        [Some(1), None]
    );
    // Keys as `&str`, `String` or anything else that is `AsRef<str>`.
    let owned = vec![String::from("a")];
    assert_eq!(cache.get_many::<u64>("token_count", &owned), [Some(1)]);
}

/// The `try_` forms and `read` keep the reason that the plain ones log and turn into `None`.
#[test]
fn try_forms_keep_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tokcache::Cache::open(tmp.path()).unwrap();
    cache.set("test", "n", &5u64).unwrap();
    cache.set("test", "s", "text").unwrap();
    cache.set_tokens("test", "t", &[1, 2, 3]).unwrap();
    let bad = |e: &tokcache::Error| matches!(e, tokcache::Error::InvalidPrefix { .. });
    let borrowed = ReadOptions::default().borrowed();
    assert!(cache.read("../x", "n", borrowed).is_err_and(|e| bad(&e)));
    assert!(cache.get_tokens("../x", "t").is_none());
    let many = cache.try_get_many::<u64>("../x", &["n", "s"]);
    assert_eq!(many.len(), 2);
    assert!(many.iter().all(|r| r.as_ref().is_err_and(bad)));
    assert!(
        cache
            .get_many::<u64>("../x", &["n"])
            .iter()
            .all(Option::is_none)
    );
    // A value of another type: an error for that key only.
    let many = cache.try_get_many::<u64>("test", &["n", "s", "absent"]);
    assert_eq!(many[0].as_ref().unwrap(), &Some(5));
    assert!(matches!(many[1], Err(tokcache::Error::Decode(_))));
    assert!(matches!(many[2], Ok(None)));
    assert!(cache.get_tokens("test", "n").is_none());
    let t = cache.get_tokens("test", "t").unwrap();
    assert_eq!(t.as_tokens(), Some(&[1u32, 2, 3][..]));
    assert!(cache.get_tokens("test", "absent").is_none());
    assert_eq!(
        cache.read("test", "n", borrowed).unwrap().unwrap().as_i64(),
        Some(5)
    );
}

/// `read` and `read_many`: values of every kind, as `get` finds them, with the
/// kind that says which accessor holds them; a disk hit goes into the RAM tier (short keys)
/// or stays borrowed from the map (keys over 4 KiB).
#[test]
fn values_of_any_kind_through_the_ram_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(NOW));
    let writer = Cache::builder(tmp.path())
        .clock(clock.clone())
        .open()
        .unwrap();
    let long = "x".repeat(10_000);
    writer.set("test", "int", &-5i64).unwrap();
    writer.set("test", "float", &0.25f64).unwrap();
    writer.set_tokens("test", "tokens", &[7, 8]).unwrap();
    writer.set("test", "json", &json!({"a": [1, "é"]})).unwrap();
    writer.set("test", &long, &3u64).unwrap();

    let reader = Cache::builder(tmp.path())
        .clock(clock.clone())
        .open()
        .unwrap();
    let kinds = |c: &Cache| {
        let keys = ["int", "float", "tokens", "json", long.as_str(), "absent"];
        c.read_many("test", &keys, ReadOptions::default())
            .into_iter()
            .map(|r| r.unwrap().map(|v| v.kind()))
            .collect::<Vec<_>>()
    };
    use tokcache::ValueKind::{Float, Int, Json, Tokens};
    let want = vec![
        Some(Int),
        Some(Float),
        Some(Tokens),
        Some(Json),
        Some(Int),
        None,
    ];
    assert_eq!(kinds(&reader), want);
    let s = reader.get_stats();
    assert_eq!((s.disk_hits, s.misses, s.ram_entries), (5, 1, 4), "{s:?}");
    assert_eq!(kinds(&reader), want);
    let s = reader.get_stats();
    assert_eq!((s.ram_hits, s.disk_hits), (4, 6), "{s:?}");

    let get = |k: &str| {
        reader
            .read("test", k, ReadOptions::default())
            .unwrap()
            .unwrap()
    };
    assert_eq!(get("json").as_json_str(), Some(r#"{"a":[1,"é"]}"#));
    assert_eq!(get("int").as_i64(), Some(-5));
    assert_eq!(get("float").as_f64(), Some(0.25));
    assert_eq!(get("tokens").as_tokens(), Some(&[7u32, 8][..]));
    assert_eq!(get(&long).as_i64(), Some(3));
    assert!(matches!(
        reader.read("../bad", "k", ReadOptions::default()),
        Err(tokcache::Error::InvalidPrefix { .. })
    ));
    // Expired: a miss.
    clock.set(NOW + 90_000.0);
    assert!(
        reader
            .read("test", "int", ReadOptions::default())
            .unwrap()
            .is_none()
    );
}

/// An uncounted read finds what `get` finds without counting a hit or a miss.
#[test]
fn uncounted_reads_are_not_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    cache.set("test", "k", &1u64).unwrap();
    cache.set_token_count("cl100k_base", "hello", 2).unwrap();
    let before = cache.get_stats();
    let uncounted = ReadOptions::default().uncounted();
    assert_eq!(
        cache
            .read("test", "k", uncounted)
            .unwrap()
            .unwrap()
            .as_i64(),
        Some(1)
    );
    assert!(cache.read("test", "absent", uncounted).unwrap().is_none());
    assert_eq!(
        cache
            .read_token_count("cl100k_base", "hello", uncounted)
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        cache
            .read_token_count("cl100k_base", "absent", uncounted)
            .unwrap(),
        None
    );
    let after = cache.get_stats();
    assert_eq!(
        (after.ram_hits, after.disk_hits, after.misses),
        (before.ram_hits, before.disk_hits, before.misses)
    );
    assert_eq!(
        cache
            .read_token_count("cl100k_base", "hello", ReadOptions::default())
            .unwrap(),
        Some(2)
    );
    cache
        .set("token_count", "tokenizer:cl100k_base:text", "not a count")
        .unwrap();
    assert!(matches!(
        cache.read_token_count("cl100k_base", "text", ReadOptions::default()),
        Err(tokcache::Error::Decode(_))
    ));
    assert_eq!(cache.get_stats().misses, after.misses);
}
