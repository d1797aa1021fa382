"""count_messages and acount_messages: the cookbook rule on tiktoken for every conversation,
the values' entries shared with count_tokens, clear errors for what cannot be counted, and
one encode per text however many threads or coroutines ask at once."""

import asyncio
import random
import threading

import pytest

from tokcache import PersistentTokenCache

PIECES = [
    "Hello, how are you?",
    "Привет, как дела? ",
    "日本語のテキストです。",
    'fn main() { println!("{}", 1 + 2); }\n',
    "    def f(x):\n        return x ** 2\n",
    "🙂🚀 emoji and ZWJ 👩\u200d👩\u200d👧",
    "",
    " ",
    "مرحبا بالعالم",
]


def cookbook(messages, encode, tokens_per_message=3, tokens_per_name=1, reply_tokens=3):
    """OpenAI's cookbook num_tokens_from_messages, with text parts counted as values."""
    n = 0
    for m in messages:
        n += tokens_per_message
        for key, value in m.items():
            if isinstance(value, list):
                n += sum(len(encode(p["text"])) for p in value)
            else:
                n += len(encode(value))
            if key == "name":
                n += tokens_per_name
    return n + reply_tokens


def text(rng):
    parts = rng.choice([0, 3000] + [rng.randrange(40)] * 8)  # now and then ~50 KB
    return "".join(rng.choice(PIECES) for _ in range(parts))


def message(rng, i):
    m = {"role": ["system", "user", "assistant", "tool"][i % 4], "content": text(rng)}
    if rng.random() < 0.25:
        m["name"] = f"user_{rng.randrange(5)}"
    if rng.random() < 0.1:
        m["content"] = [{"type": "text", "text": text(rng)}, {"type": "text", "text": "more"}]
    return m


def test_growing_conversations_equal_the_cookbook_rule(cache_dir, cl100k):
    cache = PersistentTokenCache(cache_dir)
    rng = random.Random(3)
    for conversation in range(6):
        chat = []
        for turn in range(rng.randrange(1, 25)):
            chat.append(message(rng, turn))
            want = cookbook(chat, cl100k.encode)
            assert cache.count_messages(chat, cl100k.encode) == want, (conversation, turn)
        # Another framing, same entries.
        rule = dict(tokens_per_message=4, tokens_per_name=-1, reply_tokens=2)
        assert cache.count_messages(chat, cl100k.encode, **rule) == cookbook(
            chat, cl100k.encode, **rule
        )


def test_values_are_count_tokens_entries(cache_dir, cl100k):
    cache = PersistentTokenCache(cache_dir)
    chat = [{"role": "user", "content": "Count me once."}]
    cache.count_messages(chat, cl100k.encode)

    def never(_text):
        raise AssertionError("encoded again")

    assert cache.count_tokens("Count me once.", never) == len(cl100k.encode("Count me once."))
    assert cache.count_tokens("user", never) == 1
    # And the other way round: what count_tokens stored is not encoded again.
    cache.count_tokens("Counted before.", cl100k.encode)
    calls = []
    cache.count_messages(
        [{"role": "user", "content": "Counted before."}], lambda t: calls.append(t) or [0]
    )
    assert calls == []
    # Another process sees them.
    assert PersistentTokenCache(cache_dir).get_token_count("Count me once.") is not None


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "user", "content": None}], TypeError),
        ([{"role": "user", "content": 42}], TypeError),
        ([{"role": "user", "name": ["a"]}], TypeError),
        ([["role", "user"]], TypeError),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], ValueError),
        ([{"role": "user", "content": [{"type": "text", "text": 7}]}], TypeError),
        ([{"role": "user", "content": ["just a string"]}], TypeError),
        ([{1: "user"}], TypeError),
        (None, TypeError),
    ],
)
def test_what_cannot_be_counted_raises(cache_dir, messages, error):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(error, match="."):
        cache.count_messages(messages, lambda t: [0] * len(t))
    with pytest.raises(error):
        asyncio.run(cache.acount_messages(messages, lambda t: [0] * len(t)))


def test_threads_missing_the_same_text_encode_it_once(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    calls = []
    gate = threading.Barrier(8)

    def encode(t):
        calls.append(t)
        return t.split()

    def count():
        gate.wait()
        return cache.count_messages([{"role": "user", "content": "same new text " * 500}], encode)

    results = []
    threads = [threading.Thread(target=lambda: results.append(count())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert calls.count("same new text " * 500) == 1


def test_acount_messages_equals_count_messages_and_encodes_once(cache_dir, cl100k):
    cache = PersistentTokenCache(cache_dir)
    rng = random.Random(9)
    chats = [[message(rng, i) for i in range(rng.randrange(1, 12))] for _ in range(8)]
    shared_new = {"role": "user", "content": "a message every request adds " * 2000}
    calls = []

    def encode(t):
        calls.append(t)
        return cl100k.encode(t)

    async def main():
        return await asyncio.gather(
            *(cache.acount_messages(c + [shared_new], encode) for c in chats)
        )

    got = asyncio.run(main())
    assert got == [cookbook(c + [shared_new], cl100k.encode) for c in chats]
    assert calls.count(shared_new["content"]) == 1
    # Everything is cached now.
    calls.clear()
    assert asyncio.run(main()) == got
    assert calls == []
