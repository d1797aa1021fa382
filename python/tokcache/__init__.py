"""tokcache: a persistent cache for tokenization results that many processes share safely.

A drop-in for the original ``PersistentTokenCache``: same constructor, same ``get``/``set``
and statistics, the same entry names (``{prefix}_{md5(key)}``) and JSON on export, but the
entries live in a few memory-mapped files that every process of a pool reads and writes under
file locks, so a lookup is a hash probe in shared memory and no file is opened per entry.

    >>> from tokcache import PersistentTokenCache
    >>> cache = PersistentTokenCache(temp_dir="temp")
    >>> cache.set("tokenizer:cl100k_base:hello", 1, prefix="token_count")
    >>> cache.get("tokenizer:cl100k_base:hello", prefix="token_count")
    1

The directory is shared with Rust programs and the ``tokcache`` command-line tool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union

from ._tokcache import (
    Cache as _Cache,
    _count_cached,
    _peek,
    _peek_token_count,
    CacheDegradedWarning,
    CorruptCacheError,
    DegradedError,
    NewerFormatError,
    SharedTierError,
    logical_name,
)

__all__ = [
    "PersistentTokenCache",
    "get_persistent_cache",
    "persistent_cache",
    "logical_name",
    "token_count_key",
    "CacheDegradedWarning",
    "CorruptCacheError",
    "DegradedError",
    "NewerFormatError",
    "SharedTierError",
    "PoolCollector",
]

__version__ = "0.1.0"

T = TypeVar("T")

_MISSING = object()


class _Flights:
    """One computation per key at a time among the threads of a process.

    A forked child starts with none (its parent's threads are not in it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: Dict[Any, Tuple[threading.Lock, int]] = {}
        _all_flights.add(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._keys = {}

    def join(self, key: Any) -> "_Flight":
        with self._lock:
            lock, waiting = self._keys.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._keys[key] = (lock, waiting + 1)
        return _Flight(self, key, lock)

    def leave(self, key: Any) -> None:
        with self._lock:
            lock, waiting = self._keys[key]
            if waiting == 1:
                del self._keys[key]
            else:
                self._keys[key] = (lock, waiting - 1)


class _Flight:
    def __init__(self, flights: _Flights, key: Any, lock: threading.Lock) -> None:
        self._flights = flights
        self._key = key
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self._flights.leave(self._key)


_all_flights: "weakref.WeakSet[_Flights]" = weakref.WeakSet()


class PersistentTokenCache(_Cache):
    """A persistent token cache in ``temp_dir``, shared by every process that opens it.

    PersistentTokenCache(temp_dir="temp", max_ram_entries=1000, cache_ttl_hours=24, *,
                         max_ram_bytes=None, max_disk_bytes=..., file_mode=None, strict=False)

    ``temp_dir`` is a ``str`` or ``os.PathLike``. Lookups ask this process's RAM tier
    (``max_ram_entries`` entries, at most ``max_ram_bytes`` bytes, 16 MiB by default), then the
    shared directory; an entry older than ``cache_ttl_hours`` is a miss. New files get
    ``file_mode`` (0o600 by default, before the umask). ``max_disk_bytes`` bounds what the
    directory takes on disk, for every process that uses it (the last one to give a bound sets
    it; not given: the directory's bound, 1 GiB on a new directory; ``None`` or 0: no bound):
    compactions evict the oldest entries that were not read since they were written. A directory that cannot be used gives a
    cache that works from RAM only and a ``CacheDegradedWarning``; ``strict=True`` raises the
    ``OSError`` instead. The start-up banner is logged at INFO on the ``tokcache`` logger.

    An instance may be used from many threads, and from processes forked after it was made
    (a child opens its own state on its first call). It pickles as its settings, so a
    ``spawn`` worker that receives it opens the same directory.
    """

    __slots__ = ("_flights", "__weakref__")

    def __init__(
        self,
        temp_dir: Union[str, "os.PathLike[str]"] = "temp",
        max_ram_entries: int = 1000,
        cache_ttl_hours: float = 24,
        *,
        max_ram_bytes: Optional[int] = None,
        max_disk_bytes: Optional[int] = -1,
        file_mode: Optional[int] = None,
        strict: bool = False,
        redis_url: Optional[str] = None,
        redis_namespace: Optional[str] = None,
        redis_timeout: Optional[float] = None,
    ) -> None:
        # The native constructor opened the cache with these arguments.
        self._flights = _Flights()

    def get_or_set(self, key: str, fn: Callable[[], Any], prefix: str = "token") -> Any:
        """The value of ``key``; on a miss, ``fn()`` computed, stored and returned.

        Threads of this process asking for the same key at once compute it once: the others
        wait and return what it stored. (``fn`` must not ask for the same key itself.)
        """
        value = self.get(key, prefix, _MISSING)
        if value is not _MISSING:
            return value
        with self._flights.join((prefix, key)):
            value = _peek(self, key, prefix, _MISSING)
            if value is _MISSING:
                value = fn()
                self.set(key, value, prefix)
        return value

    def count_tokens(
        self, text: str, encode: Callable[[str], Any], encoding: str = "cl100k_base"
    ) -> int:
        """``len(encode(text))``, cached under the original's entry (prefix ``token_count``,
        key ``tokenizer:{encoding}:{text}``), which is never built: the text is hashed and
        compared in place.

        ``encode`` is the tokenizer's encode, e.g. ``tiktoken.get_encoding("cl100k_base").encode``.
        Threads counting the same text at once call ``encode`` once.
        """
        n = self.get_token_count(text, encoding)
        if n is not None:
            return n
        with self._flights.join(("token_count", encoding, text)):
            n = _peek_token_count(self, text, encoding)
            if n is None:
                n = len(encode(text))
                self.set_token_count(text, n, encoding)
        return n

    def count_messages(
        self,
        messages: Iterable[Mapping[str, Any]],
        encode: Callable[[str], Any],
        encoding: str = "cl100k_base",
        *,
        tokens_per_message: int = 3,
        tokens_per_name: int = 1,
        reply_tokens: int = 3,
    ) -> int:
        """The tokens of a chat conversation, counted as OpenAI's cookbook counts them with
        tiktoken: every value of every message encoded and counted, plus
        ``tokens_per_message`` per message, ``tokens_per_name`` per ``name``, plus
        ``reply_tokens``. A ``content`` that is a list of parts counts the text of each part
        (``{"type": "text", "text": ...}``).

        Each value is the entry ``count_tokens(value, encode, encoding)`` uses, so counts are
        shared with every other caller and process. All values are looked up in one call with
        the GIL released; the missing ones are encoded (on several threads when there are
        several and they are long: tiktoken's ``encode`` releases the GIL), stored, and
        summed. Threads counting the same text at once encode it once.

        Raises ``TypeError`` for a message that is not a dict or a value that is not text
        (``None``, numbers, lists other than a content's parts), ``ValueError`` for a content
        part that is not text (an image): never a wrong number.
        """
        total, missing = _count_cached(
            self, messages, encoding, tokens_per_message, tokens_per_name, reply_tokens
        )
        if missing:
            total += self._count_missing(missing, encode, encoding, parallel=True)
        return total

    async def acount_messages(
        self,
        messages: Iterable[Mapping[str, Any]],
        encode: Callable[[str], Any],
        encoding: str = "cl100k_base",
        *,
        tokens_per_message: int = 3,
        tokens_per_name: int = 1,
        reply_tokens: int = 3,
    ) -> int:
        """``count_messages`` for asyncio servers: the event loop never waits for a
        tokenization. The values are looked up on the loop (microseconds; in an executor when
        the cache has a Redis tier, whose misses are network round trips); the missing ones
        are encoded in a small executor of its own (one thread fewer than the cores, at least
        one, so that tokenizing conversations never takes every core from the loop).
        Concurrent requests that miss on the same text encode it once."""
        loop = asyncio.get_running_loop()
        look = functools.partial(
            _count_cached,
            self,
            messages if isinstance(messages, list) else list(messages),
            encoding,
            tokens_per_message,
            tokens_per_name,
            reply_tokens,
        )
        if self.redis_url is None:
            total, missing = look()
        else:
            total, missing = await loop.run_in_executor(_async_pool(), look)
        if missing:
            total += await loop.run_in_executor(
                _async_pool(), self._count_missing, missing, encode, encoding, False
            )
        return total

    def _count_missing(
        self, missing: List[str], encode: Callable[[str], Any], encoding: str, parallel: bool
    ) -> int:
        times = collections.Counter(missing)
        texts = list(times)
        count = functools.partial(self._count_one, encode=encode, encoding=encoding)
        if parallel and len(texts) > 1 and sum(map(len, texts)) >= _PARALLEL_BYTES:
            counts = list(_parallel_pool().map(count, texts))
        else:
            counts = [count(t) for t in texts]
        return sum(n * times[t] for t, n in zip(texts, counts))

    def _count_one(self, text: str, encode: Callable[[str], Any], encoding: str) -> int:
        with self._flights.join(("token_count", encoding, text)):
            n = _peek_token_count(self, text, encoding)
            if n is None:
                n = len(encode(text))
                self.set_token_count(text, n, encoding)
        return n

    def __enter__(self) -> "PersistentTokenCache":
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a ``with`` block makes what was set durable (``flush``), where the cache
        has a directory to write."""
        if self.storage == "disk":
            self.flush()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            _reopen,
            (
                type(self),
                self.temp_dir,
                self.max_ram_entries,
                self.cache_ttl_hours,
                self.redis_url,
                self.redis_namespace,
                self.redis_timeout,
                self.max_ram_bytes,
                self.file_mode,
                self.strict,
                self._max_disk_bytes_given,
            ),
        )


def _reopen(
    cls: type,
    temp_dir: Any,
    max_ram_entries: int,
    cache_ttl_hours: float,
    redis_url: Optional[str] = None,
    redis_namespace: Optional[str] = None,
    redis_timeout: Optional[float] = None,
    max_ram_bytes: Optional[int] = None,
    file_mode: Optional[int] = None,
    strict: bool = False,
    max_disk_bytes: Optional[int] = -1,
) -> Any:
    return cls(
        temp_dir,
        max_ram_entries,
        cache_ttl_hours,
        redis_url=redis_url,
        redis_namespace=redis_namespace,
        redis_timeout=redis_timeout,
        max_ram_bytes=max_ram_bytes,
        file_mode=file_mode,
        strict=strict,
        max_disk_bytes=max_disk_bytes,
    )


# Misses of one conversation totalling this many characters are encoded on several threads
# (below it, starting them costs more than it saves).
_PARALLEL_BYTES = 16 * 1024
_pools: Dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(name: str, workers: int) -> concurrent.futures.ThreadPoolExecutor:
    pool = _pools.get(name)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(name)
            if pool is None:
                pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix=f"tokcache-{name}"
                )
                _pools[name] = pool
    return pool


def _parallel_pool() -> concurrent.futures.ThreadPoolExecutor:
    return _pool("encode", os.cpu_count() or 1)


def _async_pool() -> concurrent.futures.ThreadPoolExecutor:
    return _pool("aencode", max(1, (os.cpu_count() or 1) - 1))


_instances: Dict[str, PersistentTokenCache] = {}
_instances_lock = threading.Lock()


def get_persistent_cache(temp_dir: Union[str, "os.PathLike[str]", None] = None) -> PersistentTokenCache:
    """The process-wide cache of ``temp_dir``: ``$TOKCACHE_DIR`` if not given, else ``temp``
    (as Rust's ``tokcache::get_persistent_cache``), with a shared tier at ``$TOKCACHE_REDIS``
    if that is set, and the disk bound ``$TOKCACHE_MAX_DISK_BYTES`` if that is set (bytes; 0:
    none). The same instance for the same directory on every call; a directory that
    cannot be used gives a RAM-only cache and a warning, never an error. A forked child keeps
    using its parent's instance (safely)."""
    if temp_dir is None:
        temp_dir = os.environ.get("TOKCACHE_DIR") or "temp"
    path = os.path.abspath(os.fspath(temp_dir))
    cache = _instances.get(path)
    if cache is None:
        with _instances_lock:
            cache = _instances.get(path)
            if cache is None:
                cache = PersistentTokenCache(
                    temp_dir,
                    redis_url=os.environ.get("TOKCACHE_REDIS") or None,
                    max_disk_bytes=_env_disk_bound(),
                )
                _instances[path] = cache
    return cache


def _env_disk_bound() -> Optional[int]:
    value = os.environ.get("TOKCACHE_MAX_DISK_BYTES", "").strip()
    if not value:
        return -1
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"TOKCACHE_MAX_DISK_BYTES must be a number of bytes, not {value!r}"
        ) from None


def _after_fork_in_child() -> None:
    # Locks a thread of the parent held at the fork stay held in the child: new ones. The
    # parent's executor threads are not in the child either: new pools on first use.
    global _instances_lock, _pools_lock
    _instances_lock = threading.Lock()
    _pools_lock = threading.Lock()
    _pools.clear()
    for flights in _all_flights:
        flights._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def token_count_key(encoding: str, text: str) -> str:
    """The original's token-count key: ``tokenizer:{encoding}:{text}``."""
    return f"tokenizer:{encoding}:{text}"


def _decorator_key(name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
    parts = [name]
    parts.extend(str(a) for a in args)
    parts.extend(f"{k}:{v}" for k, v in sorted(kwargs.items()))
    return "|".join(parts)


def persistent_cache(
    cache: Optional[PersistentTokenCache] = None, prefix: str = "token"
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The original's decorator: memoizes a function in ``cache`` (the process-wide one if
    None) under ``prefix``, keyed by the function's name, its arguments and its sorted keyword
    arguments joined by ``|`` (``count|hello|model:gpt``). A result of None is not cached.
    Threads calling it with the same arguments at once compute it once."""

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            target = cache if cache is not None else get_persistent_cache()
            key = _decorator_key(func.__name__, args, kwargs)
            value = target.get(key, prefix, _MISSING)
            if value is not _MISSING and value is not None:
                return value  # type: ignore[no-any-return]
            with target._flights.join((prefix, key)):
                value = _peek(target, key, prefix)
                if value is None:
                    value = func(*args, **kwargs)
                    if value is not None:
                        target.set(key, value, prefix)
            return value  # type: ignore[no-any-return]

        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper

    return decorate


class PoolCollector:
    """A ``prometheus_client`` collector of a cache's pool statistics (every process using its
    directory, summed) and sizes::

        from prometheus_client import REGISTRY
        REGISTRY.register(tokcache.PoolCollector(cache))

    It exposes the metrics of ``tokcache stats --prometheus``: ``tokcache_hits_total{tier}``,
    ``tokcache_misses_total``, ``tokcache_sets_total``, ``tokcache_evictions_total{tier}``, ...,
    and the gauges ``tokcache_disk_bytes``, ``tokcache_entries``, ``tokcache_processes``."""

    def __init__(self, cache: PersistentTokenCache) -> None:
        self._cache = cache

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pool = self._cache.pool_stats()
        stats = self._cache.get_stats()
        hits = CounterMetricFamily(
            "tokcache_hits", "Lookups answered, by the tier that answered.", labels=["tier"]
        )
        for tier in ("ram", "disk", "shared"):
            hits.add_metric([tier], pool[tier + "_hits"])
        yield hits
        for name, key, help_text in (
            ("tokcache_misses", "misses", "Lookups that found nothing."),
            ("tokcache_sets", "saves", "Entries written."),
            ("tokcache_removals", "removals", "Entries removed."),
            ("tokcache_expired", "expired", "Expired entries dropped."),
            ("tokcache_expired_reclaimed", "expired_reclaimed", "Expired entries whose disk space compactions gave back."),
            ("tokcache_compactions", "compactions", "Compactions done."),
            ("tokcache_compaction_seconds", "compaction_seconds", "Time spent compacting."),
            ("tokcache_shared_errors", "shared_errors", "Failed operations of the shared tier."),
            ("tokcache_shared_dropped", "shared_drops", "Entries the shared tier's writer dropped."),
        ):
            yield CounterMetricFamily(name, help_text, value=pool[key])
        evictions = CounterMetricFamily(
            "tokcache_evictions", "Entries evicted to make room, by tier.", labels=["tier"]
        )
        evictions.add_metric(["ram"], pool["ram_evictions"])
        evictions.add_metric(["disk"], pool["disk_evictions"])
        yield evictions
        for name, value, help_text in (
            ("tokcache_disk_bytes", stats["disk_bytes"], "Bytes the cache's files take on disk."),
            ("tokcache_max_disk_bytes", stats["max_disk_bytes"] or 0, "The directory's disk bound (0: none)."),
            ("tokcache_segment_bytes", stats["segment_bytes"], "Bytes of the segment files (live and dead records)."),
            ("tokcache_live_bytes", stats["live_bytes"], "Bytes of live records."),
            ("tokcache_entries", stats["disk_files"], "Entries on disk."),
            ("tokcache_processes", pool["processes"], "Live cache handles of the pool."),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
