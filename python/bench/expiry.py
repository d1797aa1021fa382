"""Expired space given back without clear_expired: unique 2 KB message keys set flat out into a
cache with a 7.2 s TTL (cache_ttl_hours=0.002) for N seconds (argument, default 40), the
directory's size (du -sb) sampled every 0.5 s beside the bytes of the entries set within the
last TTL (2060 bytes each: key and record; the keys are random letters, which do not
compress). Run from the package's virtualenv:

    python python/bench/expiry.py 40 [DIR] [BOUND]

BOUND: the directory's disk bound in bytes (`none` or 0: none; default: the default, 1 GiB).
"""
import os, sys, tempfile, time, threading, subprocess
from tokcache import PersistentTokenCache
d = sys.argv[2] if len(sys.argv) > 2 else os.path.join(tempfile.mkdtemp(), "cache")
ttl_h = 0.002  # 7.2 s
bound = sys.argv[3] if len(sys.argv) > 3 else None
kw = {} if bound is None else {"max_disk_bytes": None if bound == "none" else int(bound)}
cache = PersistentTokenCache(d, max_ram_entries=1000, cache_ttl_hours=ttl_h, **kw)
stop = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 40)
samples = []
sets = [0]
def sampler():
    while time.time() < stop:
        out = subprocess.run(["du", "-sb", d], capture_output=True, text=True).stdout.split()
        samples.append((time.time(), int(out[0]) if out else 0, sets[0]))
        time.sleep(0.5)
t = threading.Thread(target=sampler); t.start()
# Keys of random letters (slices of one random text at varying offsets): tokcache stores keys
# of 512 bytes or more compressed, and a repeated letter would compress to almost nothing.
import random
rng = random.Random(7)
text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz     ", k=1 << 22))
i = 0
start = time.time()
while time.time() < stop:
    for _ in range(1000):
        at = (i * 7919) % ((1 << 22) - 2000)
        cache.set_token_count(f"{i} {text[at:at + 2000]}", i)
        i += 1
    sets[0] = i
t.join()
el = time.time() - start
rate = i / el
print(f"{i} sets in {el:.1f} s: {rate:.0f}/s")
# live bytes ~ the entries of the last TTL: from the set counts sampled TTL ago
worst = 0
for (ts, size, n) in samples:
    if ts - start < 7.2 * 1.5:
        continue
    prev = [s for s in samples if s[0] <= ts - 7.2]
    if not prev:
        continue
    live_entries = n - prev[-1][2]
    live_bytes = live_entries * (2000 + 60)  # key + record overhead, approx
    worst = max(worst, size / live_bytes)
    print(f"t={ts-start:5.1f}s dir={size/1e6:8.1f} MB live~{live_bytes/1e6:8.1f} MB ratio={size/live_bytes:.2f}")
print(f"worst ratio after 1.5 TTL: {worst:.2f}")
