//! The CLI with a shared tier (a real `redis-server`): a new machine reads through it before
//! anything made its cache directory.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, redis: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokcache"))
        .arg("--dir")
        .arg(dir)
        .args(["--redis", redis])
        .args(args)
        .env_remove("TOKCACHE_DIR")
        .output()
        .unwrap()
}

#[test]
fn get_through_the_shared_tier_needs_no_directory_yet() {
    let server = common::redis::Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("machine-a");
    let out = run(&first, &server.url(), &["set", "k", "[1,2,3]"]);
    assert!(out.status.success(), "{out:?}");
    // Another machine: no directory yet.
    let second = tmp.path().join("machine-b");
    let out = run(&second, &server.url(), &["get", "k"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[1,2,3]\n");
    // Without a shared tier a missing directory is still an error.
    let out = Command::new(env!("CARGO_BIN_EXE_tokcache"))
        .arg("--dir")
        .arg(tmp.path().join("machine-c"))
        .args(["get", "k"])
        .env_remove("TOKCACHE_DIR")
        .env_remove("TOKCACHE_REDIS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
