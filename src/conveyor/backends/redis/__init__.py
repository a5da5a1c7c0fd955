"""The Redis backend (Redis 7+, Valkey, Redis Cluster): `RedisBackend`.

Install with ``pip install 'conveyor[redis]'`` (redis-py with hiredis). See `backend` for the
time source and `codec` for the key layout.

Durability: Redis keeps jobs in memory. Run it with ``appendonly yes`` and
``appendfsync everysec`` so a Redis crash loses at most about one second of acknowledged
writes (enqueues, settles), and with ``maxmemory-policy noeviction`` so memory pressure makes
writes fail loudly instead of evicting job keys (the backend logs a warning at first use when
the policy is anything else).

Cluster (``redis+cluster://``): every key of one queue shares a hash tag, so queues spread
over the cluster's nodes. Two limits follow: a unique key is unique *per queue* (on a single
Redis it is unique across queues), and an idle worker listening to queues in several slots
blocks on the first queue's wake-up list and looks at the others every 100 ms.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from conveyor.errors import MissingDependency

    raise MissingDependency(
        "the Redis backend needs redis-py: pip install 'conveyor[redis]'"
    ) from exc

from conveyor.backends.redis.backend import RedisBackend
from conveyor.clock import Clock

__all__ = ["RedisBackend", "from_url"]


def from_url(url: str, clock: Clock | None = None) -> RedisBackend:
    """``redis://``, ``rediss://``, ``redis+cluster://``, ``rediss+cluster://``."""
    return RedisBackend(url, clock=clock)
