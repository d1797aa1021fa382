//! Compatibility with the original: a directory it wrote opens as a cache, and export writes
//! exactly the bytes it writes. Fixtures come from `tests/fixtures/make_original.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokcache::{Cache, ManualClock};

const FIXTURE_NOW: f64 = 1764000000.0;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn open_at(dir: &Path, now: f64) -> Cache {
    Cache::builder(dir)
        .clock(Arc::new(ManualClock::at(now)))
        .open()
        .unwrap()
}

#[test]
fn a_directory_of_the_original_opens_as_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("original"), tmp.path());
    let before = files(tmp.path());
    let cache = open_at(tmp.path(), FIXTURE_NOW);

    let text = "Hello, world! Caches avoid re-tokenizing — même le texte accentué 🙂.";
    let key = tokcache::token_count_key("cl100k_base", text);
    assert_eq!(cache.get::<u64>("token_count", &key), Some(21));
    let long = format!("tokenizer:cl100k_base:{}", "long prompt line\n".repeat(300));
    assert_eq!(cache.get::<u64>("token_count", &long), Some(1201));
    let sym = tokcache::original::symbol_test_key("§", &["def foo():", "class Bar:", "x = 1"]);
    assert_eq!(
        cache.get::<f64>("symbol_efficiency", &sym),
        Some(0.8333333333333334)
    );
    assert_eq!(
        cache.get::<f64>("symbol_efficiency", "symbol_test:→:a|b"),
        Some(1e-5)
    );
    assert_eq!(
        cache.get::<String>("test", "key1").as_deref(),
        Some("value1")
    );
    assert_eq!(
        cache.get::<serde_json::Value>("test", "nested"),
        Some(serde_json::json!({"z": [1, 2.5, null, true], "a": {"ü": "\u{7}"}}))
    );
    assert_eq!(
        cache.get::<u64>("test", "expired"),
        None,
        "older than the TTL"
    );
    assert_eq!(
        cache.get::<String>("test", "truncated"),
        None,
        "damaged file"
    );
    assert_eq!(
        cache.get::<u64>("test", "right-key"),
        None,
        "name does not match the key"
    );
    assert_eq!(cache.get_stats().disk_files, 7);

    // Nothing of the directory was changed, removed or renamed.
    let after = files(tmp.path());
    for (name, bytes) in &before {
        assert_eq!(after.get(name), Some(bytes), "{name} was touched");
    }
}

#[test]
fn export_is_byte_for_byte_the_original_files() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("original"), tmp.path());
    let cache = open_at(tmp.path(), FIXTURE_NOW);
    let mut exported = BTreeMap::new();
    cache.for_each_entry(|e| {
        assert!(e.is_original());
        exported.insert(
            format!("{}.json", e.logical_name()),
            e.to_original_json().unwrap().into_bytes(),
        );
    });
    assert_eq!(exported.len(), 7);
    for (name, bytes) in exported {
        let original = std::fs::read(fixture("original").join(&name)).unwrap();
        assert_eq!(bytes, original, "{name}");
    }
}

#[test]
fn values_set_here_export_as_python_writes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(FIXTURE_NOW));
    let cache = Cache::builder(tmp.path())
        .clock(clock.clone())
        .ttl(Duration::from_secs(3600))
        .open()
        .unwrap();
    let golden = std::fs::read_to_string(fixture("golden.jsonl")).unwrap();
    let mut want = BTreeMap::new();
    for line in golden.lines() {
        let obj: serde_json::Value = serde_json::from_str(line).unwrap();
        let (prefix, key) = (
            obj["prefix"].as_str().unwrap(),
            obj["key"].as_str().unwrap(),
        );
        clock.set(obj["timestamp"].as_f64().unwrap());
        cache.set(prefix, key, &obj["value"]).unwrap();
        want.insert(tokcache::logical_name(prefix, key), line.to_string());
    }
    let mut got = BTreeMap::new();
    cache.for_each_entry(|e| {
        got.insert(e.logical_name(), e.to_original_json().unwrap());
    });
    assert_eq!(got, want);
}

#[test]
fn clear_all_removes_original_entries_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("original"), tmp.path());
    let cache = open_at(tmp.path(), FIXTURE_NOW);
    cache.clear_all().unwrap();
    assert_eq!(cache.get::<String>("test", "key1"), None);
    let left = files(tmp.path());
    for keep in ["settings.json", "upload.tmp", "notes.txt"] {
        assert!(left.contains_key(keep), "{keep} is not ours");
    }
    assert!(
        !left.keys().any(|n| n.starts_with("token_count_")),
        "{left:?}"
    );
    // Reopening does not bring anything back.
    drop(cache);
    assert_eq!(open_at(tmp.path(), FIXTURE_NOW).get_stats().disk_files, 0);
}
