"""Real pools on one directory: multiprocessing with fork (the cache opened in the parent, as
`get_persistent_cache()` at import time does), spawn and forkserver; a worker killed with
SIGKILL; threads of one process. Nothing set may be lost, no read may return a wrong value."""

import json
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

import tokcache

WORKERS = 8
OPS = 5000
SHARED_KEYS = 300


def value_of(key: str):
    """The one value any writer ever stores under `key`, of a kind that varies with it."""
    n = sum(key.encode())
    kinds = (n, f"v:{key}", [n, key], {"key": key, "n": n * 1.5}, 2**70 + n)
    return kinds[n % len(kinds)]


def run_ops(cache, wid: int, ops: int, results: Path) -> None:
    """Mixed operations; records which of its own keys it left set and which removed."""
    rng = random.Random(wid)
    present, removed = [], set()
    for i in range(ops):
        r = rng.random()
        if r < 0.35:
            key = f"w{wid}-{i}"
            cache.set(key, value_of(key), "test")
            present.append(key)
            removed.discard(key)
        elif r < 0.5:
            key = f"s{rng.randrange(SHARED_KEYS)}"
            cache.set(key, value_of(key), "test")
        elif r < 0.55 and present:
            key = present.pop(rng.randrange(len(present)))
            cache.remove(key, "test")
            removed.add(key)
        elif r < 0.6:
            keys = [f"s{rng.randrange(SHARED_KEYS)}" for _ in range(20)]
            for key, got in zip(keys, cache.get_many(keys, "test")):
                assert got is None or got == value_of(key), (key, got)
        else:
            if rng.random() < 0.5:
                key = f"w{rng.randrange(WORKERS)}-{rng.randrange(ops)}"
            else:
                key = f"s{rng.randrange(SHARED_KEYS)}"
            got = cache.get(key, "test")
            assert got is None or got == value_of(key), (key, got)
        if wid == 0 and i % 1500 == 1499:
            cache.compact()
    for key in present:
        assert cache.get(key, "test") == value_of(key), key
    results.write_text(json.dumps({"present": present, "removed": sorted(removed)}))


def pool_worker(directory: str, wid: int, ops: int, results: str) -> None:
    # Under fork this is the parent's instance, opened before the fork; under spawn and
    # forkserver the worker opens its own.
    cache = tokcache.get_persistent_cache(directory)
    run_ops(cache, wid, ops, Path(results))


def verify(directory: Path, results_dir: Path, workers) -> None:
    cache = tokcache.PersistentTokenCache(directory)
    for wid in workers:
        done = json.loads((results_dir / f"{wid}.json").read_text())
        for key in done["present"]:
            assert cache.get(key, "test") == value_of(key), key
        for key in done["removed"]:
            assert cache.get(key, "test") is None, key
    for s in range(SHARED_KEYS):
        key = f"s{s}"
        got = cache.get(key, "test")
        assert got is None or got == value_of(key)


def join_all(procs, timeout: float = 120.0) -> None:
    """Waits for every process; one still running after `timeout` seconds in all is killed
    (and the test then fails on its exit code), so that a hang fails instead of waiting."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def start_workers(ctx, directory: Path, results_dir: Path, ops: int = OPS):
    procs = [
        ctx.Process(target=pool_worker, args=(str(directory), wid, ops, str(results_dir / f"{wid}.json")))
        for wid in range(WORKERS)
    ]
    for p in procs:
        p.start()
    return procs


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_of_eight_workers(tmp_path, method):
    directory, results_dir = tmp_path / "cache", tmp_path / "results"
    results_dir.mkdir()
    stop = threading.Event()
    # Under libfaketime (CI's rerun with the clock moved) a child forked while another thread
    # waits for the GIL hangs in libfaketime's own lock (its pthread_cond_init after the
    # fork); there the parent opens the cache and forks without the writing thread.
    writing = method == "fork" and "FAKETIME" not in os.environ
    if method == "fork":
        # The parent opened the cache (as get_persistent_cache() at import time does) and
        # keeps writing from a thread while it forks, so a child may be forked while the
        # parent holds the cache's locks.
        parent = tokcache.get_persistent_cache(directory)
        parent.set("parent", value_of("parent"), "test")

    if writing:

        def keep_writing():
            i = 0
            while not stop.is_set():
                parent.set(f"p{i % 1000}", value_of(f"p{i % 1000}"), "test")
                i += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
    try:
        procs = start_workers(mp.get_context(method), directory, results_dir)
        join_all(procs)
    finally:
        stop.set()
    if writing:
        writer.join()
    assert [p.exitcode for p in procs] == [0] * WORKERS
    verify(directory, results_dir, range(WORKERS))
    if method == "fork":
        assert parent.get("parent", "test") == value_of("parent")
        assert parent.get("w3-0", "test") in (None, value_of("w3-0"))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_killed_does_not_stop_the_others(tmp_path, method):
    directory, results_dir = tmp_path / "cache", tmp_path / "results"
    results_dir.mkdir()
    tokcache.PersistentTokenCache(directory).set("before", 1, "test")
    procs = start_workers(mp.get_context(method), directory, results_dir, ops=OPS * 2)
    victim = procs[random.randrange(WORKERS)]
    time.sleep(random.uniform(0.05, 0.4) + (0.5 if method == "spawn" else 0.0))
    os.kill(victim.pid, signal.SIGKILL)
    join_all(procs)
    survivors = [wid for wid, p in enumerate(procs) if p is not victim]
    assert victim.exitcode == -signal.SIGKILL
    assert [procs[w].exitcode for w in survivors] == [0] * (WORKERS - 1)
    verify(directory, results_dir, survivors)
    assert tokcache.PersistentTokenCache(directory).get("before", "test") == 1


def test_eight_threads_on_one_instance(tmp_path):
    cache = tokcache.PersistentTokenCache(tmp_path / "cache")
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    errors = []

    def thread(wid):
        try:
            run_ops(cache, wid, OPS, results_dir / f"{wid}.json")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    verify(tmp_path / "cache", results_dir, range(WORKERS))
