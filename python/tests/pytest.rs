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

    virtualenv(&venv, REQUIREMENTS);

    let cli = build_cli(repo, &target);
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
            .env("TOKCACHE_CLI", &cli)
            .env("HYPOTHESIS_STORAGE_DIRECTORY", tmp.join("hypothesis"))
            .current_dir(&tmp),
    );
}

/// What the wheel's test needs beyond [`REQUIREMENTS`]: zig (maturin links with it against an
/// old glibc) and auditwheel.
const WHEEL_TOOLS: &[&str] = &["ziglang>=0.13", "auditwheel>=6"];

/// A virtualenv at `venv` with `packages` installed (once: a stamp file remembers them).
fn virtualenv(venv: &Path, packages: &[&str]) {
    let stamp = venv.join("tokcache-requirements");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return;
    }
    let _ = std::fs::remove_dir_all(venv);
    run(
        "creating a virtualenv",
        real_clock(Command::new(python()))
            .args(["-m", "venv"])
            .arg(venv),
    );
    run(
        "installing packages into it",
        real_clock(Command::new(venv.join("bin").join("python")))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    );
    std::fs::write(&stamp, &wanted).expect("write the requirements stamp");
}

/// The release artifacts a user installs: a manylinux wheel (abi3, built with zig against
/// glibc 2.17) that auditwheel accepts, and an sdist; the wheel installed into a fresh
/// virtualenv, with no cargo or rustc on `PATH`, passes the Python suite.
#[test]
fn wheel() {
    if env::var_os("FAKETIME").is_some() {
        // CI's reruns with the clock moved look for tests that depend on the date: the builds
        // here run under the real clock anyway, and `python_package` reruns the same suite.
        println!("the wheel is built and tested under the real clock only");
        return;
    }
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = package.parent().expect("python/ is inside the repository");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tools = tmp.join("wheel-tools");
    let tools_bin = tools.join("bin");
    let tool_packages: Vec<&str> = ["maturin>=1.9,<2"]
        .iter()
        .chain(WHEEL_TOOLS)
        .copied()
        .collect();
    virtualenv(&tools, &tool_packages);
    let target = tmp.join("wheel-target");
    let out = tmp.join("wheels");
    let _ = std::fs::remove_dir_all(&out);
    run(
        "building the wheel (maturin build --release --zig)",
        real_clock(Command::new(tools_bin.join("maturin")))
            .args(["build", "--quiet", "--release", "--locked", "--zig"])
            .args(["--compatibility", "manylinux2014", "--out"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            // The wheel is stripped: the release profile's line tables only cost build time.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("PATH", path_with(&tools_bin))
            .current_dir(package),
    );
    run(
        "building the sdist",
        real_clock(Command::new(tools_bin.join("maturin")))
            .args(["sdist", "--out"])
            .arg(&out)
            .env("PATH", path_with(&tools_bin))
            .current_dir(package),
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("the wheels directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    let wheel = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel was built");
    let name = wheel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        name.contains("-abi3-") && name.contains("manylinux_2_17_x86_64"),
        "wheel {name}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tar.gz")),
        "no sdist in {files:?}"
    );
    let shown = real_clock(Command::new(tools_bin.join("auditwheel")))
        .arg("show")
        .arg(wheel)
        .output()
        .expect("auditwheel runs");
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && shown_text.contains("\"manylinux_2_17_x86_64\""),
        "auditwheel show: {shown_text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );

    // A fresh virtualenv with the wheel and what the suite needs; the CLI the interop tests
    // call is built beforehand, so that nothing in the run needs a Rust toolchain.
    let env_dir = tmp.join("wheel-env");
    virtualenv(&env_dir, &REQUIREMENTS[1..]);
    let env_bin = env_dir.join("bin");
    run(
        "installing the wheel",
        real_clock(Command::new(env_bin.join("python")))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--force-reinstall", "--no-deps"])
            .arg(wheel),
    );
    let cli_target = tmp.join("python-target");
    let cli = build_cli(repo, &cli_target);
    // No cargo, rustc or maturin: the virtualenv and the system's own directories only.
    let bare_path = env::join_paths([env_bin.as_path(), Path::new("/usr/bin"), Path::new("/bin")])
        .expect("plain paths");
    let sandbox = tmp.join("wheel-run");
    let _ = std::fs::create_dir_all(&sandbox);
    let found = Command::new(env_bin.join("python"))
        .args(["-c", "import shutil, tokcache; print(tokcache.__file__); assert not shutil.which('cargo') and not shutil.which('rustc')"])
        .env("PATH", &bare_path)
        .current_dir(&sandbox)
        .output()
        .expect("python runs");
    let location = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.status.success() && location.contains("site-packages"),
        "the installed wheel is not what runs: {location}{}",
        String::from_utf8_lossy(&found.stderr)
    );
    run(
        "pytest on the installed wheel",
        Command::new(env_bin.join("python"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp"])
            .arg(tmp.join("pytest-wheel"))
            .arg(package.join("tests"))
            .env("PATH", &bare_path)
            .env("TOKCACHE_CLI", &cli)
            .env("HYPOTHESIS_STORAGE_DIRECTORY", tmp.join("hypothesis-wheel"))
            .current_dir(&sandbox),
    );
}

/// Builds the `tokcache` CLI the interop tests call into `target`; returns its path.
fn build_cli(repo: &Path, target: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        "building the tokcache CLI",
        real_clock(Command::new(cargo))
            .args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "tokcache-tools",
                "--bin",
                "tokcache",
            ])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(repo),
    );
    target.join("debug").join("tokcache")
}

/// `$PATH` with `dir` first (maturin finds the virtualenv's python there).
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).expect("PATH entries without ':'")
}
