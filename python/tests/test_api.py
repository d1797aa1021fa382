"""The original's API and this package's additions, value by value and error by error."""

import array
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

import tokcache
from tokcache import (
    CacheDegradedWarning,
    DegradedError,
    PersistentTokenCache,
    get_persistent_cache,
    persistent_cache,
)

VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    2**200,
    -(3**150),
    0.0,
    -0.0,
    1.5,
    1e-05,
    1e300,
    5e-324,
    "",
    "plain",
    'quote " backslash \\ newline \n tab \t',
    "h\u00e9llo \u4e16\u754c \U0001f642",
    "\x00\x1f\x7f",
    [],
    [1, "two", 3.0, None, [True]],
    {},
    {"a": 1, "b": [1, 2, {"c": "\U0001f600"}], "": None},
    {"big": 2**100, "neg": -(2**70)},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_round_trip_with_their_types(cache_dir, value):
    cache = PersistentTokenCache(cache_dir)
    cache.set("k", value, prefix="test")
    for reader in (cache, PersistentTokenCache(cache_dir)):  # RAM tier, then the files
        got = reader.get("k", prefix="test")
        assert got == value
        assert json.dumps(got) == json.dumps(value)  # same types all the way down (1 != 1.0 here)


def test_tuples_come_back_as_lists_as_in_the_original(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    cache.set("k", (1, (2, "x")), prefix="test")
    assert cache.get("k", prefix="test") == [1, [2, "x"]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), [1, float("nan")], {"x": float("inf")}])
def test_nan_and_infinities_raise_value_error(cache_dir, bad):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(ValueError):
        cache.set("k", bad)
    assert cache.get("k") is None


@pytest.mark.parametrize("bad,name", [({1, 2}, "set"), (object(), "object"), ([b"x"], "bytes"), ({"a": 1j}, "complex")])
def test_what_json_cannot_hold_raises_type_error_naming_the_type(cache_dir, bad, name):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(TypeError, match=name):
        cache.set("k", bad)


def test_circular_values_and_lone_surrogates_raise_value_error(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError):
        cache.set("k", loop)
    with pytest.raises(ValueError):
        cache.set("k", "\ud800")
    with pytest.raises(ValueError):
        cache.set("\udfff", 1)


def test_deep_nesting_raises_not_crashes(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        cache.set("k", deep)


@pytest.mark.parametrize("prefix", ["", "../x", "a/b", "x" * 65, ".hidden", "sp ace", "\u00e9"])
def test_bad_prefixes_raise_value_error(cache_dir, prefix):
    cache = PersistentTokenCache(cache_dir)
    for call in (
        lambda: cache.set("k", 1, prefix=prefix),
        lambda: cache.get("k", prefix=prefix),
        lambda: cache.remove("k", prefix=prefix),
        lambda: cache.get_many(["k"], prefix=prefix),
        lambda: cache.set_tokens("k", [1], prefix=prefix),
    ):
        with pytest.raises(ValueError, match="prefix"):
            call()


@pytest.mark.parametrize("key", [1, None, b"bytes", ["k"]])
def test_keys_must_be_str(cache_dir, key):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(TypeError, match="key must be str"):
        cache.get(key)
    with pytest.raises(TypeError, match="key must be str"):
        cache.set(key, 1)


def test_get_default_remove_and_get_many(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    missing = object()
    assert cache.get("nope") is None
    assert cache.get("nope", "token", missing) is missing
    cache.set("null", None)
    assert cache.get("null", "token", missing) is None  # a stored null is not a miss
    cache.set("a", 1)
    cache.set("b", "two")
    assert cache.get_many(["a", "nope", "b", "a"]) == [1, None, "two", 1]
    assert cache.get_many(iter(["b"]), default=0) == ["two"]
    assert cache.get_many(["nope"], default=0) == [0]
    assert cache.remove("a") is True
    assert cache.remove("a") is False
    assert cache.get("a") is None
    assert PersistentTokenCache(cache_dir).get("a") is None


def test_prefixes_keep_keys_apart(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    cache.set("k", 1, prefix="one")
    cache.set("k", 2, prefix="two")
    cache.set("k", 3)
    assert [cache.get("k", p) for p in ("one", "two", "token")] == [1, 2, 3]


def test_tokens_from_lists_and_buffers(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    cache.set_tokens("list", [0, 1, 2**32 - 1])
    cache.set_tokens("tuple", (5, 6))
    cache.set_tokens("array", array.array("I", [7, 8, 9]))
    cache.set_tokens("empty", [])
    other = PersistentTokenCache(cache_dir)
    assert other.get_tokens("list") == [0, 1, 2**32 - 1]
    assert other.get_tokens("tuple") == [5, 6]
    assert other.get_tokens("array") == [7, 8, 9]
    assert other.get_tokens("empty") == []
    assert other.get("array") == [7, 8, 9]  # as JSON, the list the original stored
    assert other.get_tokens("nope") is None
    cache.set("json", [1, 2])
    assert cache.get_tokens("json") is None  # not token ids


@pytest.mark.parametrize(
    "bad,error",
    [([-1], ValueError), ([2**32], ValueError), (["1"], TypeError), ([1.0], TypeError),
     (array.array("d", [1.0]), TypeError), (array.array("H", [1]), TypeError), (5, TypeError), ("abc", TypeError)],
)
def test_bad_tokens(cache_dir, bad, error):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(error):
        cache.set_tokens("k", bad)


def test_count_tokens_caches_under_the_originals_key(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    calls = []

    def encode(text):
        calls.append(text)
        return text.split()

    text = "the quick brown fox \u00e9\U0001f642 " * 1000
    assert cache.count_tokens(text, encode) == 5000
    assert cache.count_tokens(text, encode) == 5000
    assert len(calls) == 1
    key = tokcache.token_count_key("cl100k_base", text)
    assert key == "tokenizer:cl100k_base:" + text
    assert PersistentTokenCache(cache_dir).get(key, prefix="token_count") == 5000
    cache.set("tokenizer:gpt2:" + text, 7, prefix="token_count")
    assert cache.get_token_count(text, "gpt2") == 7
    assert cache.count_tokens(text, encode, encoding="gpt2") == 7
    cache.set_token_count("x", 3)
    assert cache.get("tokenizer:cl100k_base:x", "token_count") == 3


def test_get_or_set_computes_once_across_threads(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    calls = []
    start = threading.Barrier(8)
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return {"n": len(calls)}

    def worker():
        start.wait()
        results.append(cache.get_or_set("k", compute))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [{"n": 1}] * 8
    assert cache.get_or_set("k", lambda: 1 / 0) == {"n": 1}


def test_get_or_set_lets_an_exception_through_and_the_next_caller_computes(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    with pytest.raises(ZeroDivisionError):
        cache.get_or_set("k", lambda: 1 / 0)
    assert cache.get_or_set("k", lambda: 5) == 5


def test_decorator_key_rule_and_memoization(cache_dir):
    cache = PersistentTokenCache(cache_dir)
    calls = []

    @persistent_cache(cache, prefix="memo")
    def score(symbol, context, weight=1, model="m"):
        calls.append((symbol, context, weight, model))
        return len(context) * weight

    assert score("\u00a7", "ab", model="gpt", weight=2) == 4
    assert score("\u00a7", "ab", model="gpt", weight=2) == 4
    assert len(calls) == 1
    assert score.__name__ == "score"
    # The original's rule: name, positional args, sorted keyword args, joined by "|".
    assert cache.get("score|\u00a7|ab|model:gpt|weight:2", prefix="memo") == 4

    @persistent_cache(cache)
    def nothing():
        calls.append("nothing")

    nothing()
    nothing()
    assert calls.count("nothing") == 2  # None is not cached, as in the original


def test_stats_fields_and_counts(cache_dir):
    cache = PersistentTokenCache(cache_dir, max_ram_entries=2)
    stats = cache.get_stats()
    original = ["ram_entries", "disk_files", "ram_hits", "disk_hits", "misses", "saves",
                "evictions", "hit_rate_percent", "temp_dir"]
    assert list(stats)[:9] == original
    assert stats["hit_rate_percent"] == 0.0 and stats["storage"] == "disk"
    assert stats["temp_dir"] == str(cache_dir)
    for i in range(3):
        cache.set(f"k{i}", i)
    cache.get("k2")
    cache.get("nope")
    fresh = PersistentTokenCache(cache_dir)
    fresh.get("k0")
    fresh.get("k0")
    s = cache.get_stats()
    assert (s["saves"], s["ram_hits"], s["misses"], s["disk_files"]) == (3, 1, 1, 3)
    assert s["evictions"] >= 1 and s["ram_entries"] <= 2
    assert s["hit_rate_percent"] == 50.0
    f = fresh.get_stats()
    assert (f["disk_hits"], f["ram_hits"], f["saves"]) == (1, 1, 0)


def _write_original_file(directory: Path, key: str, value, timestamp: float, prefix: str) -> Path:
    """An entry file exactly as the original wrote it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}_{hashlib.md5(key.encode()).hexdigest()}.json"
    with open(directory / name, "w") as f:
        json.dump({"key": key, "value": value, "timestamp": timestamp, "prefix": prefix}, f,
                  separators=(",", ":"))
    return directory / name


def test_reads_the_originals_files_and_expires_by_their_timestamps(cache_dir):
    now = time.time()
    _write_original_file(cache_dir, "fresh", {"v": [1, "\u00e9"]}, now - 60, "test")
    _write_original_file(cache_dir, "old", 5, now - 2 * 3600, "test")
    _write_original_file(cache_dir, "older", 6, now - 2 * 3600, "test")
    (cache_dir / "settings.json").write_text("{}")  # not an entry: left alone
    cache = PersistentTokenCache(cache_dir, cache_ttl_hours=3)
    assert cache.get("fresh", "test") == {"v": [1, "\u00e9"]}
    assert cache.get("old", "test") == 5
    short = PersistentTokenCache(cache_dir, cache_ttl_hours=1)
    assert short.get("old", "test") is None
    assert short.get("fresh", "test") == {"v": [1, "\u00e9"]}
    assert short.clear_expired() == 2
    # Gone from the directory, not only expired: a handle with the longer TTL misses it too.
    assert PersistentTokenCache(cache_dir, cache_ttl_hours=3).get("old", "test") is None
    assert (cache_dir / "settings.json").exists()
    cache.clear_all()
    assert cache.get("fresh", "test") is None
    assert cache.get_stats()["disk_files"] == 0
    assert (cache_dir / "settings.json").exists()


def test_path_like_dirs_context_manager_repr_and_pickle(cache_dir):
    with PersistentTokenCache(Path(cache_dir), max_ram_entries=10, cache_ttl_hours=0.5) as cache:
        cache.set("k", [1])
    assert repr(cache) == (
        f"PersistentTokenCache(temp_dir={str(cache_dir)!r}, max_ram_entries=10, "
        "cache_ttl_hours=0.5, storage='disk')"
    )
    clone = pickle.loads(pickle.dumps(cache))
    assert type(clone) is PersistentTokenCache
    assert clone.get("k") == [1]
    assert (clone.max_ram_entries, clone.cache_ttl_hours) == (10, 0.5)


def test_an_unusable_directory_warns_and_works_from_ram(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(CacheDegradedWarning):
        cache = PersistentTokenCache(blocker / "cache")
    assert cache.storage == "ram_only"
    cache.set("k", 1)
    assert cache.get("k") == 1
    with pytest.raises(DegradedError):
        cache.flush()
    with pytest.raises(OSError) as info:
        PersistentTokenCache(blocker / "cache", strict=True)
    assert isinstance(info.value, (NotADirectoryError, FileExistsError))
    assert str(blocker) in str(info.value.filename)


def test_bad_settings_raise_value_error(cache_dir):
    for hours in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError):
            PersistentTokenCache(cache_dir, cache_ttl_hours=hours)


def test_logical_name_is_the_originals_file_stem():
    assert tokcache.logical_name("hello", "test") == "test_" + hashlib.md5(b"hello").hexdigest()
    assert tokcache.logical_name("x") == "token_" + hashlib.md5(b"x").hexdigest()


def test_get_persistent_cache_is_one_per_process_and_honours_tokcache_dir(tmp_path):
    code = (
        "import tokcache, os\n"
        "a = tokcache.get_persistent_cache(); b = tokcache.get_persistent_cache()\n"
        "assert a is b\n"
        "a.set('k', 'v')\n"
        "print(a.get_stats()['temp_dir'])\n"
    )
    env = dict(os.environ, TOKCACHE_DIR=str(tmp_path / "from_env"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "from_env")
    assert PersistentTokenCache(tmp_path / "from_env").get("k") == "v"
    env.pop("TOKCACHE_DIR")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    assert (tmp_path / "temp").is_dir()


def test_the_original_usage_runs_unchanged(cache_dir, monkeypatch):
    """The original's documented usage, with only the import line changed."""
    monkeypatch.chdir(cache_dir.parent)
    from tokcache import get_persistent_cache  # was: from core.persistent_token_cache import ...

    cache = get_persistent_cache()
    cache.set("tokenizer:cl100k_base:hello world", 2, "token_count")
    assert cache.get("tokenizer:cl100k_base:hello world", "token_count") == 2
    stats = cache.get_stats()
    print(f"RAM entries: {stats['ram_entries']}")
    print(f"Disk files: {stats['disk_files']}")
    print(f"Hit rate: {stats['hit_rate_percent']}%")
    cache.clear_expired()
    cache.clear_all()
    assert cache.get("tokenizer:cl100k_base:hello world", "token_count") is None


def test_help_reads_well():
    doc = PersistentTokenCache.__doc__
    assert doc and "temp_dir" in doc
    for name in ("get", "set", "get_stats", "clear_expired", "clear_all", "flush", "get_many",
                 "get_or_set", "set_tokens", "get_tokens", "count_tokens", "remove"):
        method = getattr(PersistentTokenCache, name)
        assert method.__doc__ and len(method.__doc__) > 30, name
    assert "prefix='token'" in str(PersistentTokenCache.get.__text_signature__)


def test_the_stubs_declare_what_the_package_has():
    """Every public name and method is in tokcache/__init__.pyi, and nothing more."""
    import ast

    stub = ast.parse((Path(tokcache.__file__).parent / "__init__.pyi").read_text())
    declared = {n.name for n in stub.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert set(tokcache.__all__) <= declared
    cls = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "PersistentTokenCache")
    stub_methods = {
        n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    public = {
        name for name in dir(PersistentTokenCache)
        if not name.startswith("_") or name in ("__init__", "__enter__", "__exit__")
    }
    assert public == stub_methods
    for name in stub_methods:
        assert hasattr(PersistentTokenCache, name), name
    assert (Path(tokcache.__file__).parent / "py.typed").exists()
