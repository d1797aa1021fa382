//! Helpers shared by the tests that spawn real processes: the child is this same test binary,
//! entering through an `#[ignore]`d test that does nothing unless its variable is set.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// A value derived from the key, so a wrong value is detectable anywhere.
pub fn value_of(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) >> 8
}

/// The files of `dir` with this extension, sorted (by id, for segments and indexes).
pub fn files_with(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    v.sort();
    v
}

/// The spec a parent process gave this child process in `var`. The child entry points are
/// `#[ignore]`d tests: run by hand (`cargo test -- --ignored`) without their variable they fail
/// here, rather than pass having done nothing.
pub fn child_spec(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("an entry point of a child process: {var} is not set (its test starts it)")
    })
}

/// Starts this test binary running only the ignored test `entry`, with `var=spec`.
pub fn spawn_child(entry: &str, var: &str, spec: &str) -> Child {
    spawn_child_with(entry, &[(var, spec)])
}

/// Starts this test binary running only the ignored test `entry`, with these variables set.
pub fn spawn_child_with(entry: &str, vars: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child and panics with its output if it failed.
pub fn expect_success(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed ({}): {}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes the original's `{prefix}_{md5}.json` file of each key, its value `value_of(key)`, a
/// minute old by the clock the cache reads too (well inside any TTL the tests use).
pub fn write_original_files(
    dir: &std::path::Path,
    prefix: &str,
    keys: impl Iterator<Item = String>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 60.0;
    for key in keys {
        let body = format!(
            r#"{{"key":{},"value":{},"timestamp":{ts:?},"prefix":"{prefix}"}}"#,
            serde_json::to_string(&key).unwrap(),
            value_of(&key)
        );
        let name = format!("{}.json", tokcache::logical_name(prefix, &key));
        std::fs::write(dir.join(name), body).unwrap();
    }
}

/// A small xorshift generator: tests are reproducible from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
pub mod noise;
pub mod redis;
pub mod system;
