"""Bytes per entry of the real workload: message keys (English prose, 200 B - 8 KB,
log-uniform, mean ~2.1 KB: slices of Python's documentation) with token counts, and with
token-id lists (one id per 4 bytes of text). Reports the bytes of the entries' records
(`live_bytes`) and of the whole directory as the file system counts it (`disk_bytes`, the
fixed files included), per entry, beside the text's own bytes.

    python python/bench/bytes_per_entry.py [ENTRIES]
"""
import math
import random
import sys
import tempfile

import pydoc_data.topics

from tokcache import PersistentTokenCache

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
PROSE = " ".join(" ".join(t.split()) for t in pydoc_data.topics.topics.values())


def texts(n):
    rng = random.Random(1)
    out = []
    for i in range(n):
        size = int(200 * math.exp(rng.random() * math.log(40)))
        at = rng.randrange(len(PROSE) - size)
        out.append(f"message {i}: " + PROSE[at:at + size])
    return out


def main():
    msgs = texts(N)
    text_bytes = sum(len(t.encode()) for t in msgs) / N
    print(f"{N} messages, {text_bytes:.0f} bytes of text each on average")
    for what in ("token counts", "token ids"):
        with tempfile.TemporaryDirectory() as d:
            cache = PersistentTokenCache(d, max_disk_bytes=None)
            for t in msgs:
                if what == "token counts":
                    cache.set_token_count(t, len(t) // 4)
                else:
                    cache.set_tokens(t, list(range(len(t) // 4)))
            cache.compact()
            s = cache.get_stats()
            assert s["disk_files"] == N, s
            print(
                f"  {what:12}: records {s['live_bytes'] / N:6.0f} B/entry, "
                f"directory {s['disk_bytes'] / N:6.0f} B/entry"
            )


if __name__ == "__main__":
    main()
