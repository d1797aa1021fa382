"""Type stubs of the tokcache package (the native methods live in tokcache._tokcache)."""

import os
from typing import Any, Callable, Dict, Iterable, Mapping, Iterator, List, Optional, Sequence, TypeVar, Union, overload

from typing import Literal, TypedDict

from typing_extensions import NotRequired

__version__: str

_T = TypeVar("_T")
_D = TypeVar("_D")

JSONValue = Union[None, bool, int, float, str, Sequence["JSONValue"], Dict[str, "JSONValue"]]
Storage = Literal["disk", "read_only", "ram_only"]

class Stats(TypedDict):
    ram_entries: int
    disk_files: int
    ram_hits: int
    disk_hits: int
    misses: int
    saves: int
    evictions: int
    hit_rate_percent: float
    temp_dir: str
    live_bytes: int
    dead_bytes: int
    segment_bytes: int
    disk_bytes: int
    max_disk_bytes: Optional[int]
    disk_evictions: int
    expired_reclaimed: int
    index_generation: int
    recent_index_records: int
    tail_records: int
    storage: Storage
    # With a shared tier (redis_url) only.
    shared_hits: NotRequired[int]
    shared_misses: NotRequired[int]
    shared_errors: NotRequired[int]
    shared_timeouts: NotRequired[int]
    shared_skipped: NotRequired[int]
    shared_written: NotRequired[int]
    shared_dropped: NotRequired[int]
    shared_queued: NotRequired[int]

class PoolCounts(TypedDict):
    ram_hits: int
    disk_hits: int
    shared_hits: int
    misses: int
    saves: int
    removals: int
    ram_evictions: int
    disk_evictions: int
    expired: int
    expired_reclaimed: int
    compactions: int
    compaction_seconds: float
    shared_errors: int
    shared_drops: int
    hit_rate_percent: float

class ProcessRow(PoolCounts):
    pid: int
    started: float
    last_seen: float

class PoolStats(PoolCounts):
    processes: int
    live: List[ProcessRow]

class CompactReport(TypedDict):
    expired: int
    evicted: int
    bytes_freed: int
    segments_rewritten: int
    generation: int

class CorruptCacheError(OSError): ...
class NewerFormatError(OSError): ...
class DegradedError(OSError): ...
class SharedTierError(OSError): ...
class CacheDegradedWarning(RuntimeWarning): ...

class PoolCollector:
    def __init__(self, cache: PersistentTokenCache) -> None: ...
    def collect(self) -> Iterator[Any]: ...

class PersistentTokenCache:
    """A persistent token cache in ``temp_dir``, shared by every process that opens it."""

    def __init__(
        self,
        temp_dir: Union[str, "os.PathLike[str]"] = "temp",
        max_ram_entries: int = 1000,
        cache_ttl_hours: float = 24,
        *,
        max_ram_bytes: Optional[int] = None,
        max_disk_bytes: Optional[int] = ...,
        file_mode: Optional[int] = None,
        strict: bool = False,
        redis_url: Optional[str] = None,
        redis_namespace: Optional[str] = None,
        redis_timeout: Optional[float] = None,
    ) -> None: ...
    @overload
    def get(self, key: str, prefix: str = "token") -> Any: ...
    @overload
    def get(self, key: str, prefix: str = "token", *, default: _D) -> Any: ...
    @overload
    def get(self, key: str, prefix: str, default: _D) -> Any: ...
    def set(self, key: str, value: JSONValue, prefix: str = "token") -> None: ...
    def remove(self, key: str, prefix: str = "token") -> bool: ...
    def get_many(
        self, keys: Iterable[str], prefix: str = "token", default: Any = None
    ) -> List[Any]: ...
    def get_or_set(self, key: str, fn: Callable[[], _T], prefix: str = "token") -> _T: ...
    def set_tokens(
        self, key: str, tokens: Union[Sequence[int], memoryview, Any], prefix: str = "token"
    ) -> None: ...
    def get_tokens(self, key: str, prefix: str = "token") -> Optional[List[int]]: ...
    def count_tokens(
        self, text: str, encode: Callable[[str], Any], encoding: str = "cl100k_base"
    ) -> int: ...
    def count_messages(
        self,
        messages: Iterable[Mapping[str, Any]],
        encode: Callable[[str], Any],
        encoding: str = "cl100k_base",
        *,
        tokens_per_message: int = 3,
        tokens_per_name: int = 1,
        reply_tokens: int = 3,
    ) -> int: ...
    async def acount_messages(
        self,
        messages: Iterable[Mapping[str, Any]],
        encode: Callable[[str], Any],
        encoding: str = "cl100k_base",
        *,
        tokens_per_message: int = 3,
        tokens_per_name: int = 1,
        reply_tokens: int = 3,
    ) -> int: ...
    def get_token_count(self, text: str, encoding: str = "cl100k_base") -> Optional[int]: ...
    def set_token_count(self, text: str, count: int, encoding: str = "cl100k_base") -> None: ...
    def get_stats(self) -> Stats: ...
    def pool_stats(self) -> PoolStats: ...
    def reset_pool_stats(self) -> None: ...
    def clear_expired(self) -> int: ...
    def clear_all(self) -> None: ...
    def flush(self) -> None: ...
    def clear_shared(self) -> int: ...
    def compact(self) -> CompactReport: ...
    def banner(self) -> str: ...
    @property
    def temp_dir(self) -> Union[str, "os.PathLike[str]"]: ...
    @property
    def max_ram_entries(self) -> int: ...
    @property
    def max_ram_bytes(self) -> Optional[int]: ...
    @property
    def file_mode(self) -> Optional[int]: ...
    @property
    def strict(self) -> bool: ...
    @property
    def redis_url(self) -> Optional[str]: ...
    @property
    def redis_namespace(self) -> Optional[str]: ...
    @property
    def redis_timeout(self) -> Optional[float]: ...
    @property
    def cache_ttl_hours(self) -> float: ...
    @property
    def storage(self) -> Storage: ...
    def __enter__(self) -> "PersistentTokenCache": ...
    def __exit__(self, *exc: object) -> None: ...

def get_persistent_cache(
    temp_dir: Union[str, "os.PathLike[str]", None] = None,
) -> PersistentTokenCache: ...
def persistent_cache(
    cache: Optional[PersistentTokenCache] = None, prefix: str = "token"
) -> Callable[[Callable[..., _T]], Callable[..., _T]]: ...
def logical_name(key: str, prefix: str = "token") -> str: ...
def token_count_key(encoding: str, text: str) -> str: ...
