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
