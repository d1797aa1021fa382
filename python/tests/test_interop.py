"""An entry set from Python is the same entry for Rust and the CLI: the export writes the
bytes the original's json.dump would have written; the CLI reads and writes what Python does."""

import hashlib
import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from tokcache import PersistentTokenCache

# Text of any Unicode scalar value (astral ones included); lone surrogates are not str a
# cache can hold (ValueError, tested elsewhere).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # any size
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(text, children, max_size=5),
    max_leaves=20,
)
prefixes = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
entries = st.dictionaries(st.tuples(prefixes, text), json_values, min_size=1, max_size=12)


def original_bytes(key, value, timestamp, prefix) -> bytes:
    """What the original's `json.dump(..., separators=(',', ':'))` wrote for an entry."""
    entry = {"key": key, "value": value, "timestamp": timestamp, "prefix": prefix}
    return json.dumps(entry, separators=(",", ":")).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=entries)
def test_export_writes_the_originals_bytes(tmp_path_factory, cli, entries):
    base = tmp_path_factory.mktemp("export")
    cache = PersistentTokenCache(base / "cache")
    for (prefix, key), value in entries.items():
        cache.set(key, value, prefix=prefix)
    out = base / "out"
    done = run_cli(cli, "export", "--dir", str(base / "cache"), "--out", str(out), "--format", "files")
    assert done.returncode == 0, done.stderr
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(files) == len(entries)
    for (prefix, key), value in entries.items():
        name = f"{prefix}_{hashlib.md5(key.encode()).hexdigest()}.json"
        written = files[name]
        timestamp = json.loads(written)["timestamp"]
        assert written == original_bytes(key, value, timestamp, prefix)
        # And Python reads back what it stored (tuples as lists, as the original did).
        assert cache.get(key, prefix) == json.loads(json.dumps(value))


def test_the_cli_reads_what_python_set_and_python_reads_what_the_cli_set(cache_dir, cli):
    cache = PersistentTokenCache(cache_dir)
    cache.set("tokenizer:cl100k_base:h\u00e9llo", 3, prefix="token_count")
    cache.set("big", 2**80, prefix="test")
    got = run_cli(cli, "get", "--dir", str(cache_dir), "--prefix", "token_count",
                  "tokenizer:cl100k_base:h\u00e9llo")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == 3
    got = run_cli(cli, "get", "--dir", str(cache_dir), "--prefix", "test", "big")
    assert json.loads(got.stdout) == 2**80
    value = {"a": [1, 2.5, "\U0001f642"], "b": None}
    done = run_cli(cli, "set", "--dir", str(cache_dir), "--prefix", "test", "from-cli", json.dumps(value))
    assert done.returncode == 0, done.stderr
    assert cache.get("from-cli", "test") == value
    assert PersistentTokenCache(cache_dir).get("from-cli", "test") == value
    stats = run_cli(cli, "stats", "--dir", str(cache_dir), "--json")
    assert json.loads(stats.stdout)["disk_files"] == 3
