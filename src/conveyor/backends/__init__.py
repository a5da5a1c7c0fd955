"""Job stores: the contract (`Backend`) and `from_url`, which picks a store by URL scheme.

memory://                    in-process, for tests
sqlite:///path/to/jobs.db    the embedded default (relative path); sqlite:////abs/path
"""

from __future__ import annotations

from conveyor.backends.base import Backend, Counters, JobFilter, Page
from conveyor.clock import Clock
from conveyor.errors import ConfigError

__all__ = ["Backend", "Counters", "JobFilter", "Page", "from_url"]


def from_url(url: str, clock: Clock | None = None) -> Backend:
    """Open the backend a URL names.

    Example:
        backend = from_url("sqlite:///jobs.db")
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"backend URL {url!r} has no scheme; use sqlite:///path.db, memory:// or redis://..."
        )
    if scheme == "memory":
        from conveyor.backends.memory import MemoryBackend

        return MemoryBackend(clock=clock)
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ConfigError(f"backend URL {url!r} names no file; use sqlite:///jobs.db")
        return SQLiteBackend(path, clock=clock)
    raise ConfigError(f"unknown backend scheme {scheme!r} in {url!r}; supported: sqlite, memory")
