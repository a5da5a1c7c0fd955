"""Job stores: the contract (`Backend`) and `from_url`, which picks a store by URL scheme.

memory://                    in-process, for tests
sqlite:///path/to/jobs.db    the embedded default (relative path); sqlite:////abs/path
redis://[user:pw@]host:6379/0?prefix=myapp   Redis 7+ / Valkey; rediss:// for TLS
redis+cluster://host:7000?prefix=myapp      Redis Cluster (rediss+cluster:// for TLS)
"""

from __future__ import annotations

from conveyor.backends.base import Backend, ClaimRequest, Counters, JobFilter, Page
from conveyor.backends.registry import factory
from conveyor.clock import Clock

__all__ = ["Backend", "ClaimRequest", "Counters", "JobFilter", "Page", "from_url"]


def from_url(url: str, clock: Clock | None = None) -> Backend:
    """Open the backend a URL names.

    Example:
        backend = from_url("sqlite:///jobs.db")
        backend = from_url("redis://localhost:6379/0?prefix=myapp")

    Redis URLs: ``redis://`` (``rediss://`` for TLS, certificates checked), an ACL user and
    password in the URL, ``?prefix=`` for the key namespace (default ``conveyor``), and
    ``redis+cluster://`` for Redis Cluster. See `conveyor.backends.redis`. Schemes are
    looked up in `conveyor.backends.registry` (plugins add theirs by entry point).
    """
    return factory(url)(url, clock)
