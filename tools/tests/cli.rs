//! The real `tokcache` binary, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/original")
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokcache"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("TOKCACHE_DIR")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

const FOREVER: &[&str] = &["--ttl-hours", "1000000"];

#[test]
fn original_directory_import_export_round_trip_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let summary = ok(&run(
        &cache,
        &[&["import", fixture().to_str().unwrap()], FOREVER].concat(),
    ));
    assert!(
        summary.starts_with("imported 8, skipped as expired 0, rejected 2, not entries 3"),
        "{summary}"
    );
    assert!(
        summary.contains("md5 of the key differs from the name"),
        "{summary}"
    );
    ok(&run(
        &cache,
        &[&["export", "--out", out.to_str().unwrap()], FOREVER].concat(),
    ));
    let mut exported = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let original = std::fs::read(fixture().join(e.file_name())).unwrap();
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            original,
            "{:?}",
            e.file_name()
        );
        exported += 1;
    }
    assert_eq!(exported, 8);

    // JSONL export imports back into another cache and exports the same files again.
    let jsonl = tmp.path().join("all.jsonl");
    ok(&run(
        &cache,
        &[
            &[
                "export",
                "--format",
                "jsonl",
                "--out",
                jsonl.to_str().unwrap(),
            ],
            FOREVER,
        ]
        .concat(),
    ));
    let second = tmp.path().join("second");
    let summary = ok(&run(
        &second,
        &[&["import", jsonl.to_str().unwrap()], FOREVER].concat(),
    ));
    assert!(summary.starts_with("imported 8,"), "{summary}");
    let out2 = tmp.path().join("out2");
    ok(&run(
        &second,
        &[&["export", "--out", out2.to_str().unwrap()], FOREVER].concat(),
    ));
    for e in std::fs::read_dir(&out2).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(out.join(e.file_name())).unwrap()
        );
    }
}

#[test]
fn import_respects_age_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = ok(&run(tmp.path(), &["import", fixture().to_str().unwrap()]));
    assert!(
        summary.starts_with("imported 0, skipped as expired 8"),
        "{summary}"
    );
}

#[test]
fn get_set_rm_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&run(
        d,
        &[
            "set",
            "--prefix",
            "token_count",
            "tokenizer:cl100k_base:hi",
            "2",
        ],
    ));
    ok(&run(
        d,
        &["set", "--prefix", "test", "obj", r#"{"a":[1,"é"]}"#],
    ));
    assert_eq!(
        ok(&run(
            d,
            &["get", "--prefix", "token_count", "tokenizer:cl100k_base:hi"]
        )),
        "2\n"
    );
    assert_eq!(
        ok(&run(d, &["get", "--prefix", "test", "obj"])),
        "{\"a\":[1,\"é\"]}\n"
    );
    assert_eq!(
        run(d, &["get", "--prefix", "test", "missing"])
            .status
            .code(),
        Some(1)
    );
    ok(&run(d, &["rm", "--prefix", "test", "obj"]));
    assert_eq!(
        run(d, &["rm", "--prefix", "test", "obj"]).status.code(),
        Some(1)
    );
    assert_eq!(
        run(d, &["get", "--prefix", "test", "obj"]).status.code(),
        Some(1)
    );

    let bad = run(d, &["set", "--prefix", "../x", "k", "1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid prefix"));
    assert_eq!(
        run(d, &["set", "--prefix", "t", "k", "not json"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(d, &["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&d.join("nowhere"), &["stats"]).status.code(), Some(2));
    assert!(
        !d.join("nowhere").exists(),
        "a read verb does not create a cache"
    );

    let stats: serde_json::Value =
        serde_json::from_str(&ok(&run(d, &["stats", "--json"]))).unwrap();
    for field in [
        "ram_entries",
        "disk_files",
        "ram_hits",
        "disk_hits",
        "misses",
        "saves",
        "evictions",
        "hit_rate_percent",
        "temp_dir",
        "live_bytes",
        "dead_bytes",
        "index_generation",
    ] {
        assert!(stats.get(field).is_some(), "stats --json lacks {field}");
    }
    assert_eq!(stats["disk_files"], 1);
    let ls = ok(&run(d, &["ls"]));
    assert!(
        ls.contains("token_count_") && ls.contains("tokenizer:cl100k_base:hi"),
        "{ls}"
    );
}

#[test]
fn help_on_every_verb() {
    let tmp = tempfile::tempdir().unwrap();
    for verb in [
        "stats",
        "get",
        "set",
        "rm",
        "export",
        "import",
        "ls",
        "clear-expired",
        "clear",
        "compact",
        "verify",
    ] {
        let out = ok(&run(tmp.path(), &[verb, "--help"]));
        assert!(out.contains("Usage: tokcache"), "{verb}: {out}");
    }
    let top = ok(&run(tmp.path(), &["--help"]));
    assert!(top.contains("Exit status"), "{top}");
}

#[test]
fn verify_compact_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for i in 0..20 {
        ok(&run(
            d,
            &["set", "--prefix", "test", &format!("k{i}"), &i.to_string()],
        ));
    }
    std::fs::write(d.join("settings.json"), "{}").unwrap();
    assert!(ok(&run(d, &["verify"])).contains("sound"));
    // What a compaction killed half way leaves (a segment no generation names) is litter: it
    // is reported, but the cache is sound (exit 0), and the next compaction removes it.
    std::fs::write(d.join("seg-0000099999.tks"), b"half a compaction").unwrap();
    let out = ok(&run(d, &["verify"]));
    assert!(out.contains("sound (1 file(s) of litter"), "{out}");
    assert!(out.contains("litter: seg-0000099999.tks"), "{out}");
    assert!(ok(&run(d, &["compact"])).starts_with("generation 1"));
    assert!(!d.join("seg-0000099999.tks").exists());
    assert!(ok(&run(d, &["clear-expired"])).starts_with("removed 0 expired entries"));
    // Damage a record: verify fails with exit 2 and names the file.
    let seg = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "tks") && std::fs::metadata(p).unwrap().len() > 0
        })
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let out = run(d, &["verify"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("problem: seg-"));
    assert!(
        out.stderr.iter().all(|&b| b != 0x1b),
        "no progress bar when piped"
    );
    assert!(ok(&run(d, &["clear"])).starts_with("removed 20 entries"));
    assert!(d.join("settings.json").exists());
    assert!(ok(&run(d, &["verify"])).contains("sound"));
}

#[test]
fn repairs_made_while_opening_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for i in 0..10 {
        ok(&run(
            d,
            &["set", "--prefix", "test", &format!("k{i}"), &i.to_string()],
        ));
    }
    ok(&run(d, &["compact"]));
    let index = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "tki"))
        .unwrap();
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[0] ^= 0xff; // bad magic: the index cannot be opened
    std::fs::write(&index, bytes).unwrap();
    let out = run(d, &["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rebuilding"),
        "the repair is said: {stderr}"
    );
    assert_eq!(ok(&run(d, &["get", "--prefix", "test", "k3"])), "3\n");
}

#[test]
fn show_prints_one_entry_as_its_exported_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    ok(&run(
        &cache,
        &[&["import", fixture().to_str().unwrap()], FOREVER].concat(),
    ));
    ok(&run(
        &cache,
        &[&["export", "--out", out.to_str().unwrap()], FOREVER].concat(),
    ));
    let mut shown = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let file = std::fs::read(e.path()).unwrap();
        // By name, with or without `.json`: the file's bytes exactly (cat temp/NAME.json).
        for n in [name.as_str(), name.strip_suffix(".json").unwrap()] {
            let printed = run(&cache, &[&["show", n], FOREVER].concat());
            assert_eq!(ok(&printed).into_bytes(), file, "{n}");
        }
        // export --name takes just that one.
        let one = tmp.path().join(format!("one-{shown}"));
        ok(&run(
            &cache,
            &[
                &["export", "--out", one.to_str().unwrap(), "--name", &name],
                FOREVER,
            ]
            .concat(),
        ));
        let listed: Vec<_> = std::fs::read_dir(&one).unwrap().collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(std::fs::read(one.join(&name)).unwrap(), file);
        shown += 1;
    }
    assert!(shown >= 8);
    let missing = run(&cache, &["show", "token_00000000000000000000000000000000"]);
    assert_eq!(missing.status.code(), Some(1));
    let bad = run(&cache, &["show", "not-a-name"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a logical name"));
}
