//! Bad and extreme input: clear errors, nothing stored by mistake, nothing written outside.

use tokcache::{Cache, Error};

fn dir_listing(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn empty_huge_and_unicode_keys_and_values() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let texts = [
        String::new(),
        "\0".to_string(),
        "\u{1}\u{7f}\t\r\n\u{8}\u{c}\"\\/".to_string(),
        "é中🙂\u{200d}\u{202e}e\u{301}\u{fffd}\u{ffff}\u{2028}\u{10ffff}".to_string(),
        "🙂".repeat(10_000),
    ];
    for (i, t) in texts.iter().enumerate() {
        cache.set("test", t, &format!("{i}:{t}")).unwrap();
    }
    let huge_key = "k".repeat(10 << 20);
    cache.set("test", &huge_key, &1u64).unwrap();
    drop(cache);
    let cache = Cache::open(tmp.path()).unwrap();
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            cache.get::<String>("test", t),
            Some(format!("{i}:{t}")),
            "{t:?}"
        );
    }
    assert_eq!(cache.get::<u64>("test", &huge_key), Some(1));
    assert_eq!(
        cache.get::<u64>("test", &huge_key[1..]),
        None,
        "a prefix of a key is another key"
    );
    let mut exported = 0;
    cache.for_each_entry(|e| {
        let json = e.to_original_json().unwrap();
        assert!(json.is_ascii(), "ensure_ascii output");
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["key"].as_str(), Some(e.key()));
        exported += 1;
    });
    assert_eq!(exported, texts.len() + 1);
}

#[test]
fn values_of_100_mb() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let tokens: Vec<u32> = (0..25 << 20)
        .map(|i: u32| i.wrapping_mul(2654435761))
        .collect();
    cache.set_tokens("tokens", "big", &tokens).unwrap();
    let text = "a".repeat(100 << 20);
    cache.set("test", "big-text", &text).unwrap();
    drop(cache);
    let cache = Cache::open(tmp.path()).unwrap();
    assert_eq!(
        cache
            .get_tokens("tokens", "big")
            .unwrap()
            .as_tokens()
            .unwrap(),
        &tokens[..]
    );
    assert_eq!(
        cache
            .get_ref("test", "big-text")
            .unwrap()
            .as_json_str()
            .map(str::len),
        Some(text.len() + 2)
    );
}

#[test]
fn invalid_prefixes_are_errors_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let cache = Cache::open(&dir).unwrap();
    let before_parent = dir_listing(tmp.path());
    let before = dir_listing(&dir);
    let long = "p".repeat(200);
    for bad in [
        "../x",
        "/abs",
        "",
        "a\0b",
        long.as_str(),
        ".hidden",
        "a/b",
        "a b",
        "..",
        "é",
    ] {
        assert!(
            matches!(cache.set(bad, "k", &1u64), Err(Error::InvalidPrefix { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(
                cache.try_get::<u64>(bad, "k"),
                Err(Error::InvalidPrefix { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(cache.remove(bad, "k"), Err(Error::InvalidPrefix { .. })),
            "{bad:?}"
        );
        assert_eq!(cache.get::<u64>(bad, "k"), None);
        let msg = cache.set(bad, "k", &1u64).unwrap_err().to_string();
        assert!(msg.contains("invalid prefix"), "{msg}");
    }
    assert_eq!(
        dir_listing(tmp.path()),
        before_parent,
        "nothing written outside the cache directory"
    );
    assert_eq!(dir_listing(&dir), before);
    assert_eq!(cache.get_stats().saves, 0);
}

#[test]
fn values_json_cannot_hold_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = cache.set("test", "k", &v).unwrap_err();
        assert!(matches!(e, Error::InvalidValue(_)), "{e}");
    }
    assert!(cache.set("test", "k", &vec![1.0, f64::NAN]).is_err());
    assert!(cache.set("test", "k", &Some(f32::INFINITY)).is_err());
    assert_eq!(cache.get::<f64>("test", "k"), None);
    assert_eq!(cache.get_stats().disk_files, 0);

    cache.set("test", "k", "text").unwrap();
    assert!(matches!(
        cache.try_get::<u64>("test", "k"),
        Err(Error::Decode(_))
    ));
    assert_eq!(
        cache.get::<u64>("test", "k"),
        None,
        "a type mismatch is no value"
    );
    assert_eq!(cache.get::<String>("test", "k").as_deref(), Some("text"));
}

#[test]
fn original_directory_with_foreign_and_damaged_files() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = r#"{"key":"k","value":5,"timestamp":TS,"prefix":"test"}"#
        .replace("TS", &format!("{}", now()));
    std::fs::write(
        d.join(format!("{}.json", tokcache::logical_name("test", "k"))),
        &good,
    )
    .unwrap();
    let md5_wrong = format!("test_{}.json", "a".repeat(32));
    let foreign: Vec<(std::ffi::OsString, Vec<u8>)> = vec![
        ("config.json".into(), b"{\"a\":1}".to_vec()),
        ("upload.tmp".into(), b"partial".to_vec()),
        ("binary.json".into(), vec![0xff, 0xfe, 0, 1]),
        (
            format!("test_{}.json", "b".repeat(32)).into(),
            b"{\"key\":\"x\",\"va".to_vec(),
        ),
        (md5_wrong.clone().into(), good.clone().into_bytes()),
        (
            std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-name.json").to_os_string(),
            b"{}".to_vec(),
        ),
        (
            format!("test_{}.json.tmp", "c".repeat(32)).into(),
            good.clone().into_bytes(),
        ),
    ];
    for (name, bytes) in &foreign {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let cache = Cache::open(d).unwrap();
    assert_eq!(cache.get::<u64>("test", "k"), Some(5));
    assert_eq!(cache.get_stats().disk_files, 1);
    cache.clear_all().unwrap();
    for (name, bytes) in &foreign {
        assert_eq!(
            &std::fs::read(d.join(name)).unwrap(),
            bytes,
            "{name:?} was touched"
        );
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
