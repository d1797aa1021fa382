"""The pool's statistics from Python: every process's counts summed (``pool_stats``), and the
Prometheus metrics, read with ``prometheus_client``'s own parser from ``PoolCollector`` and
from ``tokcache stats --prometheus``."""

import multiprocessing as mp

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from tokcache import PersistentTokenCache, PoolCollector


def _worker(directory: str, name: str, sets: int, hits: int, misses: int) -> None:
    cache = PersistentTokenCache(directory, max_ram_entries=10)
    for i in range(sets):
        cache.set(f"{name}-{i}", i, prefix="test")
    for i in range(hits):
        assert cache.get(f"{name}-{i}", prefix="test") == i
    for i in range(misses):
        assert cache.get(f"{name}-absent-{i}", prefix="test") is None
    cache.flush()


WORK = [("a", 100, 60, 5), ("b", 7, 7, 0), ("c", 0, 0, 31), ("d", 50, 40, 2)]


def _run_pool(directory: str) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(directory, *w)) for w in WORK]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def _samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_pool_stats_sum_every_process(cache_dir):
    _run_pool(str(cache_dir))
    cache = PersistentTokenCache(cache_dir)
    pool = cache.pool_stats()
    assert pool["saves"] == 157
    assert pool["ram_hits"] + pool["disk_hits"] == 107
    assert pool["misses"] == 38
    assert pool["processes"] == 1  # this one
    assert [row["pid"] for row in pool["live"]] == [__import__("os").getpid()]
    # get_stats keeps the original's per-instance meaning.
    assert cache.get_stats()["saves"] == 0
    cache.reset_pool_stats()
    assert cache.pool_stats()["saves"] == 0


def test_prometheus_metrics_parse_with_prometheus_client(cache_dir, cli):
    _run_pool(str(cache_dir))
    cache = PersistentTokenCache(cache_dir)
    registry = CollectorRegistry()
    registry.register(PoolCollector(cache))
    for text in (generate_latest(registry).decode(), run_cli(cli, "--dir", str(cache_dir), "stats", "--prometheus").stdout):
        s = _samples(text)
        assert s[("tokcache_sets_total", ())] == 157
        hits = sum(s[("tokcache_hits_total", (("tier", t),))] for t in ("ram", "disk", "shared"))
        assert hits == 107
        assert s[("tokcache_misses_total", ())] == 38
        assert s[("tokcache_entries", ())] == 157
        assert s[("tokcache_disk_bytes", ())] > 0
        assert s[("tokcache_evictions_total", (("tier", "ram"),))] > 0
