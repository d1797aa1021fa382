"""The disk bound from Python: one per directory, shown in get_stats(), kept under skewed
traffic, and given by $TOKCACHE_MAX_DISK_BYTES to get_persistent_cache()."""

import os
import random
import subprocess
import sys

import pytest

from tokcache import PersistentTokenCache

MIB = 1 << 20


def test_the_bound_is_the_directorys(tmp_path):
    d = tmp_path / "c"
    first = PersistentTokenCache(d)
    assert first.get_stats()["max_disk_bytes"] == 1 << 30  # the default
    PersistentTokenCache(d, max_disk_bytes=32 * MIB)
    assert first.get_stats()["max_disk_bytes"] == 32 * MIB  # the last one given wins
    PersistentTokenCache(d)  # none given: the directory's stays
    assert first.get_stats()["max_disk_bytes"] == 32 * MIB
    PersistentTokenCache(d, max_disk_bytes=None)
    assert first.get_stats()["max_disk_bytes"] is None
    with pytest.raises(ValueError, match="max_disk_bytes"):
        PersistentTokenCache(d, max_disk_bytes=-5)


def test_skewed_traffic_stays_within_the_bound_and_keeps_hot_entries(tmp_path):
    d = tmp_path / "c"
    cache = PersistentTokenCache(d, max_ram_entries=0, max_disk_bytes=8 * MIB)

    letters = bytes(b"abcdefghijklmnopqrstuvwxyz     "[b % 31] for b in range(256))

    def text(name):  # letters at random: long keys are stored compressed, these barely shrink
        noise = random.Random(name).randbytes(1800).translate(letters).decode()
        return f"{name} {noise}"

    hot = [text(f"system prompt {i}") for i in range(20)]
    for i in range(12_000):  # ~22 MB of unique texts
        cache.set_token_count(text(f"message {i}"), i)
        if i % 100 == 0:
            for t in hot:
                if cache.get_token_count(t) is None:
                    cache.set_token_count(t, len(t))
    for t in hot:
        assert cache.get_token_count(t) == len(t)
    s = cache.get_stats()
    assert s["disk_bytes"] <= 8 * MIB * 5 // 4, s
    assert s["disk_evictions"] > 0, s
    for i in range(0, 12_000, 97):  # present or evicted, never wrong
        assert cache.get_token_count(text(f"message {i}")) in (None, i)


def test_get_persistent_cache_takes_the_bound_from_the_environment(tmp_path):
    code = (
        "import tokcache; c = tokcache.get_persistent_cache(); "
        "print(c.get_stats()['max_disk_bytes'])"
    )
    env = dict(os.environ, TOKCACHE_DIR=str(tmp_path / "c"), TOKCACHE_MAX_DISK_BYTES=str(48 * MIB))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(48 * MIB)
    env["TOKCACHE_MAX_DISK_BYTES"] = "lots"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "TOKCACHE_MAX_DISK_BYTES" in out.stderr
