//! Directories written by format versions 1 to 6 (`tests/fixtures/format1` .. `format6`, made
//! by those releases: five entries, a compaction, then a removal, an overwrite and a new entry
//! in the log; from `format4` on the new entry is in a recent index) open with every entry as
//! it was (docs/format.md: rebuilt from the segments on first open, but for format 6, whose
//! indexes are read as they are). The logs of the version 2 to 6 fixtures were cut to their
//! committed length (the rest was preallocated zeros).

use std::path::Path;
use std::sync::Arc;

use tokcache::{Cache, ManualClock};

/// The fixtures' entries were written on 2026-11-26 between 03:24 and 21:18 UTC; their tests
/// read them at 21:20 that day, so that with the default 24 h TTL all are fresh whatever the
/// date the suite runs on.
const FIXTURES_READ_AT: f64 = 1_795_728_000.0;

/// Opens a fixture copy with the clock at [`FIXTURES_READ_AT`].
fn open_fixture(dir: &Path) -> Cache {
    Cache::builder(dir)
        .clock(Arc::new(ManualClock::at(FIXTURES_READ_AT)))
        .open()
        .unwrap()
}

fn copy_fixture(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_format_1_directory_opens_with_every_entry() {
    opens_with_every_entry("format1");
}

#[test]
fn a_format_2_directory_opens_with_every_entry() {
    opens_with_every_entry("format2");
}

#[test]
fn a_format_3_directory_opens_with_every_entry() {
    opens_with_every_entry("format3");
}

#[test]
fn a_format_4_directory_opens_with_every_entry() {
    opens_with_every_entry("format4");
}

#[test]
fn a_format_5_directory_opens_with_every_entry() {
    opens_with_every_entry("format5");
}

#[test]
fn a_format_6_directory_opens_with_every_entry() {
    opens_with_every_entry("format6");
}

/// Format 7 only added a filter after the index archive: a format 6 index is used as it is,
/// without the filter, until the next full compaction writes one.
#[test]
fn a_format_6_index_is_read_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_fixture("format6", dir);
    let before = snapshot(dir);
    let cache = open_fixture(dir);
    let hello = "tokenizer:cl100k_base:hello world";
    assert_eq!(cache.get::<u64>("token_count", hello), Some(2));
    assert_eq!(cache.get::<f64>("scores", "pi"), Some(3.5));
    assert_eq!(cache.get::<u64>("test", "removed"), None);
    assert_eq!(cache.get::<u64>("test", "absent"), None);
    assert_eq!(cache.get_stats().index_generation, 2);
    drop(cache);
    let indexes = |files: Vec<(std::ffi::OsString, Vec<u8>)>| {
        files
            .into_iter()
            .filter(|(name, _)| name.to_string_lossy().ends_with(".tki"))
            .collect::<Vec<_>>()
    };
    assert_eq!(indexes(snapshot(dir)), indexes(before));
}

fn opens_with_every_entry(fixture: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_fixture(fixture, dir);

    let cache = open_fixture(dir);
    assert_eq!(cache.storage(), tokcache::Storage::Disk);
    let hello = "tokenizer:cl100k_base:hello world";
    assert_eq!(cache.get::<u64>("token_count", hello), Some(2));
    assert_eq!(
        cache.get::<u64>("token_count", "tokenizer:cl100k_base:after compaction"),
        Some(3)
    );
    assert_eq!(cache.get::<f64>("scores", "pi"), Some(3.5), "the overwrite");
    assert_eq!(cache.get::<u64>("test", "removed"), None, "the removal");
    assert_eq!(
        cache.get_tokens("tokens", hello).unwrap().as_tokens(),
        Some(&[15339u32, 1917][..])
    );
    assert_eq!(
        cache.get::<serde_json::Value>("test", "json"),
        Some(serde_json::json!({"a": [1, "two", null]}))
    );
    assert_eq!(cache.get_stats().disk_files, 5);

    let ctl = std::fs::read(dir.join("tokcache.ctl")).unwrap();
    assert_eq!(
        &ctl[8..12],
        &2u32.to_le_bytes(),
        "control page not upgraded"
    );
    let report = cache.verify(|_| ());
    assert!(report.problems.is_empty(), "{report:?}");

    // New records name their prefix by number; the old ones hold its text. An overwrite of
    // an old record supersedes it, in the log and through a compaction.
    cache.set("test", "new", &9u64).unwrap();
    cache.set("token_count", hello, &20u64).unwrap();
    assert_eq!(cache.get::<u64>("token_count", hello), Some(20));
    cache.compact().unwrap();
    cache.set("scores", "pi", &4.5f64).unwrap();
    drop(cache);
    let again = open_fixture(dir);
    assert_eq!(again.get::<u64>("test", "new"), Some(9));
    assert_eq!(again.get::<f64>("scores", "pi"), Some(4.5));
    assert_eq!(again.get::<u64>("token_count", hello), Some(20));
    assert_eq!(
        again.get_tokens("tokens", hello).unwrap().as_tokens(),
        Some(&[15339u32, 1917][..])
    );
    let mut listed = 0;
    again.for_each_entry(|_| listed += 1);
    assert_eq!(listed, 6);
    let report = again.verify(|_| ());
    assert!(report.problems.is_empty(), "{report:?}");
}

/// Every file of `dir` and its bytes.
fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
        .collect();
    all.sort();
    all
}

/// Sets the format version (bytes 8..12) of every file of `dir` whose name ends in `suffix`;
/// with `sign`, recomputes an index header's checksum (bytes 56..64, `xxh3_64` of 0..56), as
/// a newer release would have written it; without, the change looks like damage.
fn set_version(dir: &Path, suffix: &str, version: u32, sign: bool) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.to_str().unwrap().ends_with(suffix) {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
            if sign {
                let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..56]);
                bytes[56..64].copy_from_slice(&sum.to_le_bytes());
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

#[test]
fn a_directory_of_a_newer_format_is_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cache = Cache::open(dir).unwrap();
    cache.set("token_count", "kept", &7u64).unwrap();
    cache.compact().unwrap();
    cache.set("token_count", "in the log", &8u64).unwrap();
    drop(cache);
    let index_version = u32::from_le_bytes(
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .find(|b| b.starts_with(b"TOKCIDX1"))
            .unwrap()[8..12]
            .try_into()
            .unwrap(),
    );
    let reads_everything = |dir: &Path| {
        let cache = Cache::open(dir).unwrap();
        assert_eq!(cache.storage(), tokcache::Storage::Disk);
        assert_eq!(cache.get::<u64>("token_count", "kept"), Some(7));
        assert_eq!(cache.get::<u64>("token_count", "in the log"), Some(8));
        assert_eq!(cache.get::<u64>("token_count", "new"), None);
    };
    // A newer index, and a newer index with a newer control page: not rebuilt, not written,
    // not served.
    for newer_control in [false, true] {
        set_version(dir, ".tki", index_version + 1, true);
        if newer_control {
            set_version(dir, ".ctl", 3, false);
        }
        let before = snapshot(dir);
        let err = Cache::open(dir).unwrap_err();
        assert!(matches!(err, tokcache::Error::NewerFormat { .. }), "{err}");
        let (cache, why) = Cache::builder(dir).open_or_ram_only();
        assert!(matches!(why, Some(tokcache::Error::NewerFormat { .. })));
        assert_eq!(cache.storage(), tokcache::Storage::RamOnly);
        assert_eq!(cache.get::<u64>("token_count", "kept"), None);
        cache.set("token_count", "new", &9u64).unwrap();
        assert!(matches!(
            cache.flush(),
            Err(tokcache::Error::Degraded { .. })
        ));
        drop(cache);
        assert!(before == snapshot(dir), "the directory changed");
        // Back to this release's format: everything is there.
        set_version(dir, ".tki", index_version, true);
        set_version(dir, ".ctl", 2, false);
        reads_everything(dir);
    }
    // A version field damaged (the header's checksum says so) is damage: rebuilt.
    set_version(dir, ".tki", index_version + 1, false);
    reads_everything(dir);
}
