//! What a test needs from the machine and installs itself when it can: a Debian package, as
//! root, through `apt-get` (`redis-server`, `tmux`, `python3-venv`), so that `cargo test
//! --workspace` passes on a fresh machine with nothing installed by hand. Shared by the test
//! crates of the workspace (included by path).
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::Mutex;

/// A command on the real clock: the suite also runs under `faketime`, and `redis-server` hangs
/// at start with libfaketime preloaded (apt-get has no use for a faked clock either).
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in [
        "LD_PRELOAD",
        "FAKETIME",
        "FAKETIME_NO_CACHE",
        "FAKETIME_DONT_FAKE_MONOTONIC",
        "DONT_FAKE_MONOTONIC",
    ] {
        c.env_remove(v);
    }
    c
}

/// Whether `program --version` (or `check`, if given) runs.
fn works(program: &str, check: &[&str]) -> bool {
    let args: &[&str] = if check.is_empty() {
        &["--version"]
    } else {
        check
    };
    command(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    command("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes `program` runnable (checked with `check`, default `--version`), installing the Debian
/// `package` if it is not and this runs as root with `apt-get`. Returns whether it runs.
/// Services a package starts when installed (`redis-server`'s) are stopped again: the tests
/// start their own.
pub fn ensure(program: &str, check: &[&str], package: &str) -> bool {
    // One install at a time in this process; apt-get itself waits for other processes'.
    static APT: Mutex<()> = Mutex::new(());
    if works(program, check) {
        return true;
    }
    let _one = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if works(program, check) {
        return true;
    }
    if !is_root() || !works("apt-get", &["--version"]) {
        return false;
    }
    eprintln!("installing the Debian package {package} for the tests");
    let install = || {
        command("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
                "-y",
                "-q",
                package,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = command("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "update", "-q"])
            .stdout(Stdio::null())
            .status();
        install();
    }
    let _ = command("service")
        .args([package, "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    works(program, check)
}
