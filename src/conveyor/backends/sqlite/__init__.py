"""The SQLite backend package: schema, SQL operations and the async store."""

from __future__ import annotations

from conveyor.backends.sqlite.backend import SQLiteBackend
from conveyor.clock import Clock
from conveyor.errors import ConfigError
from conveyor.urls import mask

__all__ = ["SQLiteBackend", "from_url"]


def from_url(url: str, clock: Clock | None = None) -> SQLiteBackend:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    rest = url.partition("://")[2]
    path = rest[1:] if rest.startswith("/") else rest
    if not path:
        raise ConfigError(f"backend URL {mask(url)!r} names no file; use sqlite:///jobs.db")
    return SQLiteBackend(path, clock=clock)
