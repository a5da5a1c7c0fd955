"""Job stores: the contract (`Backend`) and `from_url`, which picks a store by URL scheme.

memory://                    in-process, for tests
sqlite:///path/to/jobs.db    the embedded default (relative path); sqlite:////abs/path
redis://[user:pw@]host:6379/0?prefix=myapp   Redis 7+ / Valkey; rediss:// for TLS
redis+cluster://host:7000?prefix=myapp      Redis Cluster (rediss+cluster:// for TLS)
"""

from __future__ import annotations

from conveyor.backends.base import Backend, Counters, JobFilter, Page
from conveyor.clock import Clock
from conveyor.errors import ConfigError
from conveyor.urls import mask

__all__ = ["Backend", "Counters", "JobFilter", "Page", "from_url"]


def from_url(url: str, clock: Clock | None = None) -> Backend:
    """Open the backend a URL names.

    Example:
        backend = from_url("sqlite:///jobs.db")
        backend = from_url("redis://localhost:6379/0?prefix=myapp")

    Redis URLs: ``redis://`` (``rediss://`` for TLS, certificates checked), an ACL user and
    password in the URL, ``?prefix=`` for the key namespace (default ``conveyor``), and
    ``redis+cluster://`` for Redis Cluster. See `conveyor.backends.redis`.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"backend URL {mask(url)!r} has no scheme; use sqlite:///path.db, memory:// or redis://..."
        )
    if scheme == "memory":
        from conveyor.backends.memory import MemoryBackend

        return MemoryBackend(clock=clock)
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ConfigError(f"backend URL {mask(url)!r} names no file; use sqlite:///jobs.db")
        return SQLiteBackend(path, clock=clock)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from conveyor.backends.redis import RedisBackend

        return RedisBackend(url, clock=clock)
    raise ConfigError(
        f"unknown backend scheme {scheme!r} in {mask(url)!r}; supported: sqlite, memory, redis, "
        "rediss, redis+cluster"
    )
