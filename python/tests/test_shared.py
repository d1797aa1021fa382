"""The shared tier from Python: caches of different directories (machines) sharing entries
through a real redis-server, and a server that is down costing nothing but misses."""

import json
import multiprocessing as mp
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tokcache
from conftest import run_cli

# The server runs on the real clock when the tests run under faketime.
_FAKETIME_VARS = ("LD_PRELOAD", "FAKETIME", "FAKETIME_NO_CACHE", "FAKETIME_DONT_FAKE_MONOTONIC")
_SERVER_ENV = {k: v for k, v in os.environ.items() if k not in _FAKETIME_VARS}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, env=_SERVER_ENV
    )
    return out.stdout.strip()


@pytest.fixture
def redis_url(tmp_path: Path):
    """A redis-server of its own on a free port, stopped after the test."""
    server = shutil.which("redis-server")
    assert server, (
        "redis-server not found: these tests need a real Redis; install the Debian package "
        "redis-server (.ci/run does it when run as root)"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_SERVER_ENV,
    )
    try:
        for _ in range(500):
            if _redis_cli(port, "PING") == "PONG":
                break
            time.sleep(0.02)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/"
    finally:
        proc.kill()
        proc.wait()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


def _machine(role: str, directory: str, url: str, n: int) -> dict:
    cache = tokcache.PersistentTokenCache(directory, redis_url=url, redis_timeout=2.0)
    for i in range(n):
        key = f"tokenizer:cl100k_base:message {i} ü𝄞"
        if role == "write":
            cache.set(key, {"n": i, "big": 2**70 + i}, prefix="token_count")
        else:
            assert cache.get(key, prefix="token_count") == {"n": i, "big": 2**70 + i}, key
    if role == "write":
        cache.flush()
    return cache.get_stats()


def test_two_machines_share_entries_through_redis(tmp_path: Path, redis_url: str):
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        wrote = pool.apply(_machine, ("write", str(tmp_path / "a"), redis_url, 200))
    assert (wrote["shared_written"], wrote["shared_dropped"]) == (200, 0), wrote
    with ctx.Pool(1) as pool:
        read = pool.apply(_machine, ("read", str(tmp_path / "b"), redis_url, 200))
    assert (read["shared_hits"], read["misses"], read["disk_files"]) == (200, 0, 200), read
    assert read["hit_rate_percent"] == 100.0


_INHERITED = None


def _set_in_forked_child(start: int) -> int:
    assert _INHERITED is not None
    for i in range(start, start + 100):
        _INHERITED.set(f"fork-{i}", i)
    _INHERITED.flush()
    return os.getpid()


def test_a_forked_pool_writes_through_its_own_tier(tmp_path: Path, redis_url: str):
    """The cache opened (and its writer thread started) in the parent, used in `fork` workers:
    each worker's sets reach Redis through its own writer."""
    global _INHERITED
    _INHERITED = tokcache.PersistentTokenCache(tmp_path / "a", redis_url=redis_url, redis_timeout=2.0)
    try:
        _INHERITED.set("parent", 1)
        _INHERITED.flush()
        with mp.get_context("fork").Pool(4) as pool:
            pids = pool.map(_set_in_forked_child, range(0, 400, 100), chunksize=1)
        assert os.getpid() not in pids
        other = tokcache.PersistentTokenCache(tmp_path / "b", redis_url=redis_url, redis_timeout=2.0)
        assert [other.get(f"fork-{i}") for i in range(400)] == list(range(400))
        assert other.get("parent") == 1
        assert other.get_stats()["shared_hits"] == 401
        assert _INHERITED.get_stats()["shared_written"] == 1, "the parent wrote only its own"
    finally:
        _INHERITED = None


def test_redis_holds_the_original_json(tmp_path: Path, redis_url: str):
    cache = tokcache.PersistentTokenCache(tmp_path, redis_url=redis_url, redis_timeout=2.0)
    cache.set("hello", [1, "two", None], prefix="token")
    cache.flush()
    stored = _redis_cli(_port(redis_url), "GET", "tokcache:" + tokcache.logical_name("hello"))
    entry = json.loads(stored)
    assert (entry["key"], entry["value"], entry["prefix"]) == ("hello", [1, "two", None], "token")
    assert stored == json.dumps(entry, separators=(",", ":"))


def test_remove_and_clear_shared(tmp_path: Path, redis_url: str, cli: str):
    one = tokcache.PersistentTokenCache(tmp_path / "a", redis_url=redis_url, redis_timeout=2.0)
    two = tokcache.PersistentTokenCache(tmp_path / "b", redis_url=redis_url, redis_timeout=2.0)
    for i in range(10):
        one.set(f"k{i}", i)
    one.remove("k0")
    one.flush()
    assert two.get("k0") is None
    assert two.get("k1") == 1
    _redis_cli(_port(redis_url), "SET", "not-ours", "x")
    assert one.clear_shared() == 9
    assert _redis_cli(_port(redis_url), "DBSIZE") == "1"
    assert two.get("k2") is None
    # The CLI shares it too: set there, read here.
    out = run_cli(cli, "--dir", str(tmp_path / "c"), "--redis", redis_url, "set", "cli-key", "[7]")
    assert out.returncode == 0, out.stderr
    assert two.get("cli-key") == [7]


def test_a_server_down_costs_only_misses(tmp_path: Path):
    url = f"redis://127.0.0.1:{_free_port()}/"
    cache = tokcache.PersistentTokenCache(tmp_path, redis_url=url, redis_timeout=0.05)
    started = time.monotonic()
    for i in range(200):
        cache.set(f"k{i}", i)
        assert cache.get(f"k{i}") == i
        assert cache.get(f"missing{i}") is None
    cache.flush()
    assert time.monotonic() - started < 5
    stats = cache.get_stats()
    assert stats["shared_errors"] >= 1 and stats["shared_hits"] == 0, stats
    with pytest.raises(tokcache.SharedTierError):
        cache.clear_shared()


def test_bad_settings_raise(tmp_path: Path):
    with pytest.raises(ValueError, match="redis"):
        tokcache.PersistentTokenCache(tmp_path, redis_url="http://not-redis/")
    with pytest.raises(ValueError, match="namespace"):
        tokcache.PersistentTokenCache(tmp_path, redis_url="redis://h/", redis_namespace="a*")
    with pytest.raises(ValueError, match="redis_timeout"):
        tokcache.PersistentTokenCache(tmp_path, redis_url="redis://h/", redis_timeout=0)
    with pytest.raises(ValueError, match="need redis_url"):
        tokcache.PersistentTokenCache(tmp_path, redis_namespace="mine")
    plain = tokcache.PersistentTokenCache(tmp_path)
    assert plain.redis_url is None and "shared_hits" not in plain.get_stats()
    with pytest.raises(tokcache.SharedTierError):
        plain.clear_shared()


def test_a_pickled_cache_keeps_its_shared_tier(tmp_path: Path, redis_url: str):
    """What a `spawn` worker receives opens the same tier: URL, namespace and timeout."""
    cache = tokcache.PersistentTokenCache(
        tmp_path / "a", redis_url=redis_url, redis_namespace="team-a", redis_timeout=2.0
    )
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.redis_url, copy.redis_namespace, copy.redis_timeout) == (redis_url, "team-a", 2.0)
    copy.set("k", 1)
    copy.flush()
    assert _redis_cli(_port(redis_url), "EXISTS", "team-a:" + tokcache.logical_name("k")) == "1"


def test_get_persistent_cache_reads_tokcache_redis(tmp_path: Path, redis_url: str):
    code = (
        "import tokcache; c = tokcache.get_persistent_cache(); "
        "c.set('env-key', 5); c.flush(); print(c.redis_url)"
    )
    env = dict(os.environ, TOKCACHE_DIR=str(tmp_path / "a"), TOKCACHE_REDIS=redis_url)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == redis_url
    other = tokcache.PersistentTokenCache(tmp_path / "b", redis_url=redis_url, redis_timeout=2.0)
    assert other.get("env-key") == 5
