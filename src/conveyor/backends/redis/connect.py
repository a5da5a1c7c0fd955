"""Connections: which one serves what, one set per event loop, errors wrapped at the edge.

Which connection serves what:

* **single Redis**: a `resp.Pipe` carries every script (as FUNCTIONs of `scripts.LIBRARY`,
  or EVALSHA where FUNCTION LOAD is refused) and every read, multiplexed on one socket; each
  concurrent blocking wait (``BLPOP``: the wake-up lists, a waiting worker's inbox) takes a
  `Pipe` of its own (`Conn.blockers`, reused once answered); a redis-py client serves the
  start-up checks (``INFO``, ``CONFIG GET``).
* **Redis Cluster**: a redis-py cluster client does everything (it routes by slot), the
  scripts as EVALSHA scripts.

Connections belong to the loop that opened them, and one backend is used from two loops in
one process (the app's and the portal's that `enqueue_sync` runs on), so `Clients` keeps one
`Conn` per running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from conveyor.backends.redis import scripts
from conveyor.backends.redis.resp import Endpoint, Pipe, drop_transport
from conveyor.errors import BackendError, ConfigError, StoreUnavailable
from conveyor.urls import mask

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
        """The URL without its password (see `conveyor.urls.mask`), for messages."""
        return mask(self.url)


def parse_url(url: str, prefix: str | None = None) -> Settings:
    """Split a Conveyor Redis URL into redis-py's URL and our own options.

    ``redis://[user:password@]host:6379/0?prefix=myapp``, ``rediss://`` for TLS (certificates
    checked unless ``ssl_cert_reqs=none`` is given), ``redis+cluster://host:port`` for a
    Redis Cluster (any node; the rest are discovered).
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"not a Redis URL: {mask(url)!r}; use redis://host:6379/0")
    cluster = _SCHEMES[scheme]
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6] host
        raise ConfigError(f"invalid Redis URL {mask(url)!r}: {exc}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = prefix or query.pop("prefix", "conveyor")
    query.pop("prefix", None)
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"invalid Redis key prefix {prefix!r} for {mask(url)!r}: use 1-64 characters "
            "from A-Z a-z 0-9 _ . : -"
        )
    try:
        timeout = float(query.pop("socket_timeout", "10"))
    except ValueError:
        raise ConfigError(f"socket_timeout in {mask(url)!r} must be a number of seconds") from None
    if not 0 < timeout < float("inf"):
        raise ConfigError(f"socket_timeout in {mask(url)!r} must be a finite number > 0")
    if cluster and parts.path not in ("", "/", "/0"):
        raise ConfigError(f"a Redis Cluster has only database 0; drop the path in {mask(url)!r}")
    base = "rediss" if scheme.startswith("rediss") else "redis"
    plain = urlunsplit((base, parts.netloc, parts.path, urlencode(query), ""))
    return Settings(plain, prefix, cluster, timeout, query)


Call = Callable[[Sequence[Any], Sequence[Any]], Awaitable[Any]]  # a script: (keys, args)


@dataclass(slots=True)
class Conn:
    """One loop's connections and its scripts.

    `scripts` maps every name in `scripts.SCRIPTS` to its call, ``await
    conn.scripts["claim"](keys, args)``. On a single Redis the scripts, reads and blocking
    waits go through `Pipe`s; redis-py's `client` serves the start-up checks. In cluster
    mode redis-py does it all (it routes by slot).
    """

    client: Client
    scripts: dict[str, Call]
    pipe: Pipe | None = None
    blockers: list[Pipe] = field(default_factory=list)

    async def call(self, *args: Any) -> Any:
        """One command; the reply as the server sent it (bytes, ints, lists)."""
        if self.pipe is None:
            return await self.client.execute_command(*args)
        return await self.pipe.call(*args)

    async def many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Read-only commands pipelined in one round trip; replies as the server sent them."""
        if self.pipe is not None:
            return await self.pipe.many(commands)
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())

    async def blpop(
        self,
        keys: Sequence[str],
        timeout: float,
        on_lost: Callable[[Any], object] | None = None,
    ) -> Any:
        """`BLPOP keys timeout`, on a connection of its own (it blocks the socket).

        Cancelled while blocked, it unblocks the command (``CLIENT UNBLOCK``) and waits for
        its reply: an element the server popped for us just before is passed to `on_lost`,
        so the caller can put it back instead of losing it.
        """
        if self.pipe is None:
            return await self.client.blpop(list(keys), timeout)
        blocker = self.blockers.pop() if self.blockers else Pipe(self.pipe.endpoint)
        reply: asyncio.Future[Any] | None = None
        try:
            client_id, reply = await blocker.submit(
                "BLPOP", *keys, repr(float(timeout)), block=timeout
            )
            value = await asyncio.shield(reply)  # a cancel must not discard its reply
        except asyncio.CancelledError:
            if reply is None:
                await blocker.aclose()
            else:
                await asyncio.shield(self._unblock(blocker, client_id, reply, on_lost))
            raise
        except BaseException:
            await blocker.aclose()  # it may still hold the blocked command: never reuse it
            raise
        self.blockers.append(blocker)
        return value

    async def _unblock(
        self,
        blocker: Pipe,
        client_id: int,
        reply: asyncio.Future[Any],
        on_lost: Callable[[Any], object] | None,
    ) -> None:
        assert self.pipe is not None
        try:
            if not reply.done():
                await self.pipe.call("CLIENT", "UNBLOCK", client_id)
            async with asyncio.timeout(min(2.0, self.pipe.endpoint.socket_timeout)):
                value = await reply
        except Exception:  # no reply (or CLIENT UNBLOCK refused): drop the connection
            reply.cancel()
            await blocker.aclose()
            return
        if value is not None and on_lost is not None:
            on_lost(value)
        self.blockers.append(blocker)  # answered: clean to reuse

    async def aclose(self) -> None:
        await self.client.aclose()
        for p in self._pipes():
            await p.aclose()

    def abandon(self) -> None:
        _abandon(self.client)
        for p in self._pipes():
            p.abandon()

    def _pipes(self) -> list[Pipe]:
        pipes, self.blockers = self.blockers, []
        return pipes if self.pipe is None else [self.pipe, *pipes]


def _open(settings: Settings) -> Conn:
    retry = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.02), retries=3)
    common: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": min(settings.socket_timeout, 5.0),
        "retry": retry,
        "decode_responses": False,
    }
    client: Client
    calls: dict[str, Call]
    if settings.cluster:
        client = RedisCluster.from_url(settings.url, **common)
        calls = {n: client.register_script(s.text) for n, s in scripts.SCRIPTS.items()}
        return Conn(client, calls)
    client = aioredis.Redis.from_url(settings.url, health_check_interval=30, **common)
    pipe = Pipe(Endpoint.from_url(settings.url, settings.socket_timeout))
    library = scripts.LIBRARY
    calls = {n: pipe.function(library, s.function, s.text) for n, s in scripts.SCRIPTS.items()}
    return Conn(client, calls, pipe)


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
                await conn.aclose()
            elif loop.is_running() and not loop.is_closed():
                fut = asyncio.run_coroutine_threadsafe(conn.aclose(), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(fut), 5)
            else:
                conn.abandon()


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
            drop_transport(writer.transport)
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
        refused = isinstance(exc, rexc.AuthenticationError | rexc.AuthorizationError)
        if refused or _tls_refused(exc):  # retrying can't fix credentials or a certificate
            raise StoreUnavailable(
                f"Redis at {settings.safe_url} refused the connection ({what}): "
                f"{str(exc).rstrip('.')}. Check the user, password and TLS options in the URL."
            ) from exc
        raise StoreUnavailable(
            f"Redis at {settings.safe_url} is unavailable ({what}): {exc}. Check that the "
            "server is up and reachable; the call can be retried.",
            transient=True,
        ) from exc
    except rexc.RedisError as exc:
        raise BackendError(f"Redis at {settings.safe_url} failed ({what}): {exc}") from exc


def _tls_refused(exc: BaseException) -> bool:
    """Whether a connection error came from TLS itself (a certificate or host name that
    does not verify, TLS spoken to a plain port), not from the network."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain, bounded (chains can loop)
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, ssl.SSLEOFError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
