"""A pickled cache (what a ``spawn`` or ``forkserver`` pool sends its workers) carries every
setting: a worker opens the same cache, not one with the defaults."""

import multiprocessing as mp
import os
import pickle
import stat

import pytest

from tokcache import PersistentTokenCache


def _settings(cache: PersistentTokenCache) -> tuple:
    return (
        str(cache.temp_dir),
        cache.max_ram_entries,
        cache.cache_ttl_hours,
        cache.max_ram_bytes,
        cache.file_mode,
        cache.strict,
        cache.redis_url,
        cache.redis_namespace,
        cache.redis_timeout,
        cache._max_disk_bytes_given,
        cache.get_stats()["max_disk_bytes"],
    )


def _in_worker(cache: PersistentTokenCache) -> tuple:
    # Files this worker makes get the cache's mode: a new prefix adds to the prefix table,
    # and a compaction writes an index.
    cache.set("from-worker", 1, prefix="worker_prefix")
    cache.compact()
    return _settings(cache)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_every_setting_reaches_a_spawned_worker(tmp_path, method):
    old = os.umask(0o002)
    try:
        cache = PersistentTokenCache(
            tmp_path / "cache",
            max_ram_entries=17,
            cache_ttl_hours=3.5,
            max_ram_bytes=1 << 20,
            max_disk_bytes=64 << 20,
            file_mode=0o660,
            strict=True,
        )
        assert _settings(pickle.loads(pickle.dumps(cache))) == _settings(cache)
        with mp.get_context(method).Pool(1) as pool:
            seen = pool.apply(_in_worker, (cache,))
    finally:
        os.umask(old)
    assert seen == _settings(cache)
    assert cache.get("from-worker", prefix="worker_prefix") == 1
    for f in (tmp_path / "cache").iterdir():
        if f.name.endswith((".tks", ".tki", ".tkp")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o660, f.name


def test_strict_travels_too(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(Warning):
        lenient = PersistentTokenCache(blocker / "cache")
    with pytest.warns(Warning):
        clone = pickle.loads(pickle.dumps(lenient))
    assert clone.strict is False and clone.storage == "ram_only"
    strict = PersistentTokenCache(tmp_path / "ok", strict=True)
    assert pickle.loads(pickle.dumps(strict)).strict is True
