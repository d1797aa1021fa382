"""A whole conversation counted at once: count_messages beside tiktoken, and acount_messages'
effect on an asyncio event loop.

Rows (median of many runs, tiktoken cl100k_base):
  tiktoken alone        the cookbook rule on tiktoken for a 40-message conversation (~80 KB)
  tokcache, all cached  count_messages of that conversation, every value cached
  one new message       count_messages of the conversation plus one new 2 KB message, beside
                        tiktoken encoding that message alone (target: <= 1.5x + 0.1 ms)
  asyncio               8 conversations at once, each adding a new 50 KB message, through
                        acount_messages, while a ticker asks to wake every 1 ms: how late it
                        wakes (the loop's lag), p99 and max over 30 rounds; beside the same
                        conversations counted on the loop with count_messages

Run from the package's virtualenv (tiktoken from PyPI; its cl100k_base file is taken from the
tiktoken-rs crate in cargo's registry when there is no network):

    python python/bench/chat.py
"""
import asyncio
import glob
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import tiktoken

from tokcache import PersistentTokenCache

URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def encoding():
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp()
        home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        found = sorted(glob.glob(f"{home}/registry/src/*/tiktoken-rs-*/assets/cl100k_base.tiktoken"))
        if found:
            shutil.copy(found[-1], os.path.join(cache, hashlib.sha1(URL.encode()).hexdigest()))
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return tiktoken.get_encoding("cl100k_base")


PROSE = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly "
    "numbers, and nobody is sure whether the cache will hold. "
)
CODE = "def f(x):\n    return [i * i for i in range(x) if i % 3]\n\n"
OTHER = "Привет, как дела? 日本語のテキストです。 مرحبا بالعالم "


def text(rng, size):
    pieces = [PROSE, CODE, OTHER]
    out = []
    n = 0
    while n < size:
        p = rng.choice(pieces)
        out.append(p)
        n += len(p)
    return "".join(out)[:size]


def conversation(rng, n=40, size=2000):
    msgs = [{"role": "system", "content": text(rng, 1500)}]
    for i in range(n - 1):
        m = {"role": "user" if i % 2 == 0 else "assistant", "content": text(rng, size)}
        if i % 5 == 0:
            m["name"] = "ann"
        msgs.append(m)
    return msgs


def cookbook(messages, encode):
    n = 3
    for m in messages:
        n += 3
        for k, v in m.items():
            n += len(encode(v))
            if k == "name":
                n += 1
    return n


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


async def lag_round(cache, enc, chats, rng, use_async):
    lags = []
    done = asyncio.Event()

    async def ticker():
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    async def one(chat):
        new = {"role": "user", "content": f"{rng.random()} " + text(rng, 50_000)}
        if use_async:
            return await cache.acount_messages(chat + [new], enc.encode)
        return cache.count_messages(chat + [new], enc.encode)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    await asyncio.gather(*(one(c) for c in chats))
    await asyncio.sleep(0.005)
    done.set()
    await tick
    return lags


def main():
    enc = encoding()
    rng = random.Random(1)
    d = os.path.join(tempfile.mkdtemp(), "cache")
    cache = PersistentTokenCache(d)
    chat = conversation(rng)
    size = sum(len(v) for m in chat for v in m.values())
    want = cookbook(chat, enc.encode)
    assert cache.count_messages(chat, enc.encode) == want
    t_tik = timed(lambda: cookbook(chat, enc.encode), 50)
    t_cached = timed(lambda: cache.count_messages(chat, enc.encode), 2000)
    print(f"conversation: {len(chat)} messages, {size / 1000:.0f} KB, {want} tokens")
    print(f"tiktoken alone:           {t_tik * 1e3:8.3f} ms")
    print(f"tokcache, all cached:     {t_cached * 1e3:8.3f} ms   ({t_tik / t_cached:.0f}x faster)")
    news = [{"role": "user", "content": f"{i} " + text(rng, 2000)} for i in range(400)]
    it = iter(news)
    t_new = timed(lambda: cache.count_messages(chat + [next(it)], enc.encode), 200)
    t_enc = timed(lambda: enc.encode(news[-1]["content"]), 200)
    print(
        f"one new 2 KB message:     {t_new * 1e3:8.3f} ms   (tiktoken on that message alone "
        f"{t_enc * 1e3:.3f} ms: {t_new / t_enc:.2f}x, {(t_new - t_enc) * 1e3:+.3f} ms)"
    )
    chats = [conversation(rng) for _ in range(8)]
    for c in chats:
        cache.count_messages(c, enc.encode)
    for use_async, label in ((True, "acount_messages"), (False, "count_messages on the loop")):
        lags = []
        for _ in range(30):
            lags += asyncio.run(lag_round(cache, enc, chats, rng, use_async))
        lags.sort()
        p99 = lags[int(len(lags) * 0.99)]
        print(
            f"asyncio, 8 x (40 messages + a new 50 KB one), {label}: loop lag p99 "
            f"{p99 * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms ({len(lags)} ticks)"
        )


if __name__ == "__main__":
    sys.exit(main())
