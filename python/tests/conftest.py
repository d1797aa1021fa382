"""Shared fixtures: a fresh cache directory, and the `tokcache` CLI built from this checkout."""

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

if "FAKETIME" in os.environ:
    # CI reruns the suite with the wall clock moved by libfaketime, under which CPython's
    # time.sleep (clock_nanosleep on an absolute monotonic deadline) fails with EINVAL.
    # The tests' sleeps go through select(), which it leaves alone.
    import select
    import time

    def _sleep(seconds: float) -> None:
        select.select([], [], [], seconds)

    time.sleep = _sleep


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cli() -> str:
    """The `tokcache` binary: $TOKCACHE_CLI (the cargo test runner sets it), else built here."""
    return _cli_path()


@functools.cache
def _cli_path() -> str:
    """Found (or built) once per pytest run."""
    path = os.environ.get("TOKCACHE_CLI")
    if not path:
        subprocess.run(
            ["cargo", "build", "--quiet", "-p", "tokcache-tools", "--bin", "tokcache"],
            cwd=REPO,
            check=True,
        )
        path = str(REPO / "target" / "debug" / "tokcache")
    assert shutil.which(path) or os.access(path, os.X_OK), f"no tokcache CLI at {path}"
    return path


def run_cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)


CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="package")
def cl100k(tmp_path_factory):
    """tiktoken's cl100k_base encoding, loaded without the network: its BPE file (the same
    bytes tiktoken downloads, which it checks by SHA-256) comes from the tiktoken-rs crate
    that cargo fetched for the Rust tests, put where tiktoken looks for its cache."""
    import glob
    import hashlib

    tiktoken = pytest.importorskip("tiktoken")
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(glob.glob(str(cargo_home / "registry/src/*/tiktoken-rs-*/assets/cl100k_base.tiktoken")))
    cache = tmp_path_factory.mktemp("tiktoken")
    if found:
        name = hashlib.sha1(CL100K_URL.encode()).hexdigest()
        shutil.copy(found[-1], cache / name)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("cl100k_base")
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
