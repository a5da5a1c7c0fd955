"""Connections: URL parsing, one redis-py client per event loop, errors wrapped at the edge.

redis-py's asyncio connections belong to the loop that opened them, and one backend is used
from two loops in one process (the app's and the portal's that `enqueue_sync` runs on), so
`Clients` keeps one client (with its own pool and registered scripts) per running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from conveyor.backends.redis import scripts
from conveyor.errors import BackendError, ConfigError, StoreUnavailable

__all__ = ["Clients", "Conn", "Settings", "parse_url", "wrap_errors"]

log = logging.getLogger("conveyor.backends.redis")

_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_SCHEMES = {"redis": False, "rediss": False, "redis+cluster": True, "rediss+cluster": True}

Client = aioredis.Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class Settings:
    """What a URL says: the redis-py URL, the key prefix and cluster mode."""

    url: str
    prefix: str = "conveyor"
    cluster: bool = False
    socket_timeout: float = 10.0
    options: dict[str, str] = field(default_factory=dict)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            user = parts.netloc.rpartition("@")[0].partition(":")[0]
            netloc = f"{user}:***@{netloc}" if user else f"***@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_url(url: str, prefix: str | None = None) -> Settings:
    """Split a Conveyor Redis URL into redis-py's URL and our own options.

    ``redis://[user:password@]host:6379/0?prefix=myapp``, ``rediss://`` for TLS (certificates
    checked unless ``ssl_cert_reqs=none`` is given), ``redis+cluster://host:port`` for a
    Redis Cluster (any node; the rest are discovered).
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"not a Redis URL: {url!r}; use redis://host:6379/0")
    cluster = _SCHEMES[scheme]
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = prefix or query.pop("prefix", "conveyor")
    query.pop("prefix", None)
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"invalid Redis key prefix {prefix!r}: use 1-64 characters from A-Z a-z 0-9 _ . : -"
        )
    try:
        timeout = float(query.pop("socket_timeout", "10"))
    except ValueError:
        raise ConfigError(f"socket_timeout in {url!r} must be a number of seconds") from None
    if timeout <= 0:
        raise ConfigError(f"socket_timeout in {url!r} must be > 0")
    if cluster and parts.path not in ("", "/", "/0"):
        raise ConfigError(f"a Redis Cluster has only database 0; drop the path in {url!r}")
    base = "rediss" if scheme.startswith("rediss") else "redis"
    plain = urlunsplit((base, parts.netloc, parts.path, urlencode(query), ""))
    return Settings(plain, prefix, cluster, timeout, query)


@dataclass(slots=True)
class Conn:
    """One loop's client and its registered scripts (EVALSHA, reloaded on NOSCRIPT)."""

    client: Client
    enqueue: AsyncScript
    claim: AsyncScript
    extend: AsyncScript
    settle: AsyncScript
    promote: AsyncScript
    rescue: AsyncScript
    purge: AsyncScript
    purge_before: AsyncScript
    cancel: AsyncScript
    requeue: AsyncScript
    wait: AsyncScript
    incr: AsyncScript


def _open(settings: Settings) -> Conn:
    retry = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.02), retries=3)
    common: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": min(settings.socket_timeout, 5.0),
        "retry": retry,
        "decode_responses": False,
    }
    client: Client
    if settings.cluster:
        client = RedisCluster.from_url(settings.url, **common)
    else:
        client = aioredis.Redis.from_url(settings.url, health_check_interval=30, **common)
    reg = client.register_script
    return Conn(
        client,
        reg(scripts.ENQUEUE),
        reg(scripts.CLAIM),
        reg(scripts.EXTEND),
        reg(scripts.SETTLE),
        reg(scripts.PROMOTE),
        reg(scripts.RESCUE),
        reg(scripts.PURGE),
        reg(scripts.PURGE_BEFORE),
        reg(scripts.CANCEL),
        reg(scripts.REQUEUE),
        reg(scripts.WAIT),
        reg(scripts.INCR),
    )


class Clients:
    """One `Conn` per running event loop, opened lazily; `aclose` closes them all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._conns: dict[asyncio.AbstractEventLoop, Conn] = {}

    def get(self) -> Conn:
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is None:
            with self._lock:
                conn = self._conns.get(loop)
                if conn is None:
                    conn = self._conns[loop] = _open(self.settings)
        return conn

    async def aclose(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, {}
        here = asyncio.get_running_loop()
        for loop, conn in conns.items():
            if loop is here:
                await conn.client.aclose()
            elif loop.is_running() and not loop.is_closed():
                fut = asyncio.run_coroutine_threadsafe(conn.client.aclose(), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(fut), 5)
            else:
                _abandon(conn.client)


def _abandon(client: Client) -> None:
    """Close the sockets of a client whose event loop has already stopped.

    Its transports can't be closed the usual way (that needs their loop), so close each
    socket directly and detach it from its transport and connection, which would otherwise
    warn (ResourceWarning) when collected.
    """
    pools = (
        [n.connection_pool for n in client.get_nodes() if n.connection_pool is not None]  # type: ignore[attr-defined]
        if isinstance(client, RedisCluster)
        else [client.connection_pool]
    )
    for pool in pools:
        conns = [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]
        for conn in conns:
            writer = getattr(conn, "_writer", None)
            if writer is None:
                continue
            transport = writer.transport
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
                transport._sock = None
            transport._closing = True  # what is_closing() reports to StreamWriter.__del__
            conn._writer = conn._reader = None


@contextlib.contextmanager
def wrap_errors(settings: Settings, what: str) -> Iterator[None]:
    """Turn redis-py's exceptions into `StoreUnavailable` / `BackendError` with context."""
    try:
        yield
    except (
        rexc.ConnectionError,
        rexc.TimeoutError,
        rexc.BusyLoadingError,
        rexc.ClusterDownError,
    ) as exc:
        raise StoreUnavailable(
            f"Redis at {settings.safe_url} is unavailable ({what}): {exc}. Check that the "
            "server is up and reachable; the call can be retried."
        ) from exc
    except rexc.RedisError as exc:
        raise BackendError(f"Redis at {settings.safe_url} failed ({what}): {exc}") from exc
