//! Runs the Python package's tests (python/tests/*.py) from `cargo test`: makes a virtualenv
//! under the target directory, installs maturin, pytest and hypothesis into it from the
//! package registry (once), builds and installs the package with `maturin develop`, builds the
//! `tokcache` CLI the interop tests call, and runs pytest.
//!
//! The builds use a target directory of their own (`cargo test` holds the lock of its own while
//! tests run) and run under the real clock: `.ci/faketime-tests` moves the clock of this test
//! (`LD_PRELOAD`), and that reaches pytest, not cargo.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the tests need from the package registry; the virtualenv is reinstalled when it changes.
const REQUIREMENTS: &[&str] = &[
    "maturin>=1.9,<2",
    "pytest>=8",
    "hypothesis>=6.100",
    "prometheus_client>=0.20",
    "tiktoken>=0.7",
];

/// Environment variables of faketime: kept away from the builds, which must see the real clock.
const FAKETIME_VARS: &[&str] = &["LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC"];

fn run(what: &str, cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{what} failed ({status}): {cmd:?}");
}

fn real_clock(mut cmd: Command) -> Command {
    for var in FAKETIME_VARS {
        cmd.env_remove(var);
    }
    cmd
}

#[path = "../../tests/common/system.rs"]
mod system;

/// `python3` (or `$PYTHON`), with a clear message when there is none. Debian's python3-venv
/// (venv's `ensurepip`) is installed here if it is missing and this runs as root.
fn python() -> String {
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    system::ensure(
        &python,
        &[
            "-c",
            "import sys, venv, ensurepip; assert sys.version_info >= (3, 9)",
        ],
        "python3-venv",
    );
    let found = Command::new(&python)
        .args(["-c", "import sys, venv; assert sys.version_info >= (3, 9)"])
        .output();
    match found {
        Ok(out) if out.status.success() => python,
        _ => panic!(
            "the Python package's tests need Python 3.9 or newer with venv and pip: `{python}` \
             was not found or is too old. Install python3 and python3-venv (Debian), or set \
             PYTHON to an interpreter."
        ),
    }
}

#[test]
fn python_package() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = package.parent().expect("python/ is inside the repository");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join("pyenv");
    let target = tmp.join("python-target");
    let bin = venv.join("bin");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let stamp = venv.join("tokcache-requirements");
    let wanted = REQUIREMENTS.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        run(
            "creating the virtualenv",
            real_clock(Command::new(python()))
                .args(["-m", "venv"])
                .arg(&venv),
        );
        run(
            "installing the test requirements",
            real_clock(Command::new(bin.join("python")))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(REQUIREMENTS),
        );
        std::fs::write(&stamp, &wanted).expect("write the requirements stamp");
    }

    run(
        "building the tokcache CLI",
        real_clock(Command::new(&cargo))
            .args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "tokcache-tools",
                "--bin",
                "tokcache",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(repo),
    );
    run(
        "building and installing the package (maturin develop)",
        real_clock(Command::new(bin.join("maturin")))
            .args(["develop", "--quiet", "--locked"])
            .env("VIRTUAL_ENV", &venv)
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", path_with(&bin))
            .current_dir(package),
    );
    run(
        "pytest",
        Command::new(bin.join("python"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp"])
            .arg(tmp.join("pytest"))
            .arg(package.join("tests"))
            .env("TOKCACHE_CLI", target.join("debug").join("tokcache"))
            .env("HYPOTHESIS_STORAGE_DIRECTORY", tmp.join("hypothesis"))
            .current_dir(&tmp),
    );
}

/// `$PATH` with `dir` first (maturin finds the virtualenv's python there).
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).expect("PATH entries without ':'")
}
