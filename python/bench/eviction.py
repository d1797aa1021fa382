"""Hit ratio under a disk bound, beside exact LRU and libCacheSim's policies at the same byte
budget, on the same traces; and what a read costs in disk writes.

Traces (token counts, get then set on a miss, as `count_tokens` does):
  zipf-0.8, zipf-1.0  100,000 texts of 200 B - 8 KB (log-uniform, mean ~2.1 KB) of English
                      prose (slices of Python's documentation), Zipf popularity, 1,000,000
                      requests
  chat                a replay of chat traffic: conversations of 2-40 turns, each turn counts
                      the system prompt (one of 20, Zipf) and every message so far, then adds
                      a reply and a new message (200 B - 8 KB); 8 conversations at a time
Budgets: 5% and 20% of the trace's unique bytes (key + value), at least 8 MiB (tokcache's
smallest bound). An object's size is its key's and value's bytes; tokcache is given the
budget as `max_disk_bytes` (which counts everything it keeps on disk: record headers,
indexes, its small files; keys of 512 bytes or more are stored compressed, so it holds more
than their text's bytes) and no RAM tier (`max_ram_entries=0`), so that only the disk bound
decides what is kept. Miss ratios count the requests after the first fifth (warm-up).

Write amplification: after a trace, 200,000 gets of cached entries only (hits), with the
bytes this process caused to be written to storage (/proc/self/io write_bytes) before and
after, plus a sync.

Run from the package's virtualenv (libcachesim from PyPI for its columns; without it they
are left out):

    python python/bench/eviction.py [REQUESTS] [DIR or ""] [prose|noise]
"""
import bisect
import collections
import math
import os
import random
import shutil
import sys
import tempfile
import time

from tokcache import PersistentTokenCache

try:
    import libcachesim as lcs
except ImportError:  # the exact LRU column still runs
    lcs = None

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
BASE = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else tempfile.mkdtemp()
# "prose" (default): slices of English text, which tokcache stores compressed; "noise":
# letters at random, which do not compress, so that the policies alone are compared.
TEXTS = sys.argv[3] if len(sys.argv) > 3 else "prose"
MIN_BOUND = 8 << 20


def size_of(i, rng_seed=7):
    r = random.Random(i * 2654435761 + rng_seed).random()
    return int(200 * math.exp(r * math.log(8000 / 200)))


def _prose():
    """English prose: Python's own documentation (the standard library's pydoc topics), so
    that keys compress as messages do (tokcache stores keys of 512 bytes or more compressed)."""
    import pydoc_data.topics

    return " ".join(" ".join(t.split()) for t in pydoc_data.topics.topics.values())


PROSE = _prose()


LETTERS = bytes(b"abcdefghijklmnopqrstuvwxyz     "[b % 31] for b in range(256))


def text_of(i):
    head = f"message {i}: "
    n = max(0, size_of(i) - len(head))
    if TEXTS == "noise":
        return head + random.Random(i).randbytes(n).translate(LETTERS).decode()
    at = (i * 7919) % (len(PROSE) - n)
    return head + PROSE[at:at + n]


def zipf_trace(n, alpha, length, seed):
    weights = [1.0 / (k + 1) ** alpha for k in range(n)]
    cdf = list(__import__("itertools").accumulate(weights))
    total = cdf[-1]
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)  # popularity unrelated to the id (and so to the size)
    return [perm[bisect.bisect_left(cdf, rng.random() * total)] for _ in range(length)]


def chat_trace(length, seed):
    rng = random.Random(seed)
    prompts = [10_000_000 + p for p in range(20)]
    pw = list(__import__("itertools").accumulate(1.0 / (k + 1) for k in range(20)))
    next_id = 0
    live = []
    out = []

    def new_conversation():
        p = prompts[bisect.bisect_left(pw, rng.random() * pw[-1])]
        return {"prompt": p, "messages": [], "turns": rng.randint(2, 40)}

    while len(out) < length:
        while len(live) < 8:
            live.append(new_conversation())
        c = live[rng.randrange(len(live))]
        c["messages"].append(next_id)
        next_id += 1
        out.append(c["prompt"])
        out.extend(c["messages"])
        c["messages"].append(next_id)  # the reply, counted from the next turn on
        next_id += 1
        c["turns"] -= 1
        if c["turns"] == 0:
            live.remove(c)
    return out[:length]


def obj_bytes(i):
    return len(text_of(i)) + 4  # key + a token count's JSON


def exact_lru(trace, budget, warm):
    lru = collections.OrderedDict()
    used = misses = 0
    for t, i in enumerate(trace):
        if i in lru:
            lru.move_to_end(i)
            continue
        if t >= warm:
            misses += 1
        s = obj_bytes(i)
        lru[i] = s
        used += s
        while used > budget:
            _, gone = lru.popitem(last=False)
            used -= gone
    return misses / (len(trace) - warm)


def libcachesim_ratio(policy, trace, budget, warm):
    cache = policy(cache_size=budget)
    req = lcs.Request()
    misses = 0
    for t, i in enumerate(trace):
        req.obj_id = i
        req.obj_size = obj_bytes(i)
        hit = cache.get(req)
        if not hit and t >= warm:
            misses += 1
    return misses / (len(trace) - warm)


def tokcache_ratio(trace, budget, warm, d):
    cache = PersistentTokenCache(d, max_ram_entries=0, max_disk_bytes=budget)
    misses = 0
    started = time.perf_counter()
    for t, i in enumerate(trace):
        text = text_of(i)
        if cache.get_token_count(text) is None:
            if t >= warm:
                misses += 1
            cache.set_token_count(text, len(text) // 4)
    elapsed = time.perf_counter() - started
    stats = cache.get_stats()
    return misses / (len(trace) - warm), elapsed, stats, cache


def write_bytes():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def read_cost(cache, trace):
    hot = [i for i in dict.fromkeys(reversed(trace)) if cache.get_token_count(text_of(i)) is not None]
    hot = hot[:5000]
    if not hot:
        return None
    os.sync()
    before = write_bytes()
    n = 0
    while n < 200_000:
        for i in hot:
            cache.get_token_count(text_of(i))
            n += 1
    os.sync()
    return (write_bytes() - before) / n, len(hot)


def main():
    traces = {
        "zipf-0.8": zipf_trace(100_000, 0.8, REQUESTS, 1),
        "zipf-1.0": zipf_trace(100_000, 1.0, REQUESTS, 2),
        "chat": chat_trace(REQUESTS, 3),
    }
    policies = [] if lcs is None else [("lcs LRU", lcs.LRU), ("lcs S3-FIFO", lcs.S3FIFO), ("lcs SIEVE", lcs.Sieve)]
    header = ["trace", "budget", "MB", "exact LRU"] + [p for p, _ in policies] + ["tokcache", "vs LRU", "evicted", "disk MB", "sets+gets/s"]
    print(" | ".join(header))
    for name, trace in traces.items():
        unique = sum(obj_bytes(i) for i in set(trace))
        warm = len(trace) // 5
        for share in (0.05, 0.20):
            budget = max(MIN_BOUND, int(unique * share))
            lru = exact_lru(trace, budget, warm)
            cols = [name, f"{share:.0%}", f"{budget / 1e6:.1f}", f"{lru:.2%}"]
            for _, p in policies:
                cols.append(f"{libcachesim_ratio(p, trace, budget, warm):.2%}")
            d = os.path.join(BASE, f"{name}-{share}")
            shutil.rmtree(d, ignore_errors=True)
            ratio, elapsed, stats, cache = tokcache_ratio(trace, budget, warm, d)
            cols += [
                f"{ratio:.2%}",
                f"{(ratio - lru) * 100:+.2f} pt",
                str(stats["disk_evictions"]),
                f"{stats['disk_bytes'] / 1e6:.1f}",
                f"{len(trace) / elapsed:,.0f}",
            ]
            print(" | ".join(cols), flush=True)
            if share == 0.20 and name == "zipf-1.0":
                cost = read_cost(cache, trace)
                if cost:
                    print(f"  read cost: {cost[0]:.3f} bytes written per hit ({cost[1]} hot entries, 200,000 hits)")
            del cache
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
