"""`Pipe`: one multiplexed Redis connection for the hot path (scripts and blocking waits).

Why not redis-py here: its asyncio client spends about 250 µs of CPU per command on this kind
of machine (a pool checkout, locks, several loop turns), against about 120 µs for the bare
socket round trip. A job costs a few commands (enqueue, claim, settle), so that overhead was
most of Conveyor's per-job cost and all of its idle latency. A `Pipe` writes each command to
the socket at once and resolves replies in order from `data_received` (hiredis parses), so
any number of coroutines share one connection without waiting for each other: concurrent
calls are pipelined for free. redis-py still does everything else (reads, administration,
Redis Cluster).

Failure handling matches what the redis-py client did for us: a call that fails because the
connection broke (refused, reset, or no reply within ``socket_timeout``) is retried up to three
times with jittered exponential backoff on a fresh connection, then raised as redis-py's
``ConnectionError``/``TimeoutError`` so `connect.wrap_errors` maps it like any other. Server
errors come back as redis-py's ``ResponseError`` family. Scripts run with ``EVALSHA`` and are
loaded on ``NOSCRIPT`` (after a server restart, say).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.exceptions as rexc
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import parse_url as redis_parse_url
from redis.backoff import ExponentialWithJitterBackoff

__all__ = ["Endpoint", "Pipe", "PipeFunction", "PipeScript", "drop_transport"]

log = logging.getLogger("conveyor.backends.redis")

_RETRIES = 3
_BACKOFF = ExponentialWithJitterBackoff(cap=0.5, base=0.02)
_ERRORS: tuple[tuple[str, type[rexc.RedisError]], ...] = (
    ("NOSCRIPT", rexc.NoScriptError),
    ("LOADING", rexc.BusyLoadingError),
    ("NOAUTH", rexc.AuthenticationError),
    ("WRONGPASS", rexc.AuthenticationError),
    ("NOPERM", rexc.NoPermissionError),
    ("READONLY", rexc.ReadOnlyError),
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a ``redis://`` / ``rediss://`` / ``unix://`` URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0

    @classmethod
    def from_url(cls, url: str, socket_timeout: float) -> Endpoint:
        """Read `url` the way redis-py does (same query options, same TLS defaults)."""
        kw: dict[str, Any] = dict(redis_parse_url(url))
        conn_class = kw.get("connection_class")
        tls = _tls_context(kw) if conn_class is SSLConnection else None
        return cls(
            host=str(kw.get("host", "localhost")),
            port=int(kw.get("port", 6379)),
            path=kw.get("path") if conn_class is UnixDomainSocketConnection else None,
            db=int(kw.get("db", 0)),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls,
            socket_timeout=socket_timeout,
            connect_timeout=float(kw.get("socket_connect_timeout", min(socket_timeout, 5.0))),
        )


def _tls_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """Certificates and host names are checked unless the URL says ``ssl_cert_reqs=none``."""
    reqs = str(kw.get("ssl_cert_reqs", "required")).lower()
    ctx = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
    if reqs in ("none", "cert_none"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif reqs in ("optional", "cert_optional"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif str(kw.get("ssl_check_hostname", "true")).lower() in ("false", "0", "no"):
        ctx.check_hostname = False
    if kw.get("ssl_certfile"):
        ctx.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"), kw.get("ssl_password"))
    return ctx


def drop_transport(transport: asyncio.BaseTransport) -> None:
    """Close a transport's socket without its event loop (which may have stopped), and mark
    it closed so it does not warn when collected. Handles TLS transports, whose socket sits
    on the plain transport underneath."""
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    t: Any
    for t in (transport, inner):
        if t is None:
            continue
        sock = getattr(t, "_sock", None)  # the real socket (the extra is a wrapper)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            t._sock = None
        t._closing = True  # what _SelectorTransport.__del__ checks
        if hasattr(t, "_closed"):
            t._closed = True  # what _SSLProtocolTransport.__del__ checks


def _server_error(reply: hiredis.ReplyError) -> rexc.RedisError:
    message = str(reply)
    for prefix, kind in _ERRORS:
        if message.startswith(prefix):
            return kind(message)
    return rexc.ResponseError(message)


class _Wire(asyncio.Protocol):
    """The socket: commands out as they come, replies matched to callers in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._progress = 0.0  # loop time of the last reply (or of a send into an empty pipe)
        self._block = 0.0  # seconds the oldest pending command may legitimately block
        self._timer: asyncio.TimerHandle | None = None
        self.broken: Exception | None = None
        self.client_id: int | None = None  # the server's id for this connection, once asked

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        try:
            while (reply := self._reader.gets()) is not False:
                fut = pending.popleft()
                if fut.done():
                    continue  # its caller was cancelled; the reply is dropped in order
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(_server_error(reply))
                else:
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self._fail(rexc.ConnectionError(f"Redis protocol error: {exc}"))
            return
        self._progress = self._loop.time()
        self._block = 0.0

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rexc.ConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    # ours

    def send(self, payload: bytes, block: float = 0.0) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        if self.broken is not None or self._transport is None:
            fut.set_exception(self.broken or rexc.ConnectionError("not connected to Redis"))
            return fut
        if not self._pending:
            self._progress = self._loop.time()
            self._block = block
        self._transport.write(payload)
        self._pending.append(fut)
        if self._timer is None:
            self._arm()
        return fut

    async def send_many(self, payload: bytes, count: int) -> list[Any]:
        """`count` commands packed in `payload`: one write, their replies in order."""
        futs = [self._loop.create_future() for _ in range(count)]
        if self.broken is not None or self._transport is None:
            raise self.broken or rexc.ConnectionError("not connected to Redis")
        if not self._pending:
            self._progress = self._loop.time()
            self._block = 0.0
        self._transport.write(payload)
        self._pending.extend(futs)
        if self._timer is None:
            self._arm()
        try:
            return [await fut for fut in futs]
        finally:
            for fut in futs:  # after a failure: drop the rest quietly
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()

    def close(self) -> None:
        self._fail(rexc.ConnectionError("connection closed"))

    def abandon(self) -> None:
        """Close the socket without the event loop (which may already be stopped)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            drop_transport(transport)

    def _arm(self) -> None:
        limit = self._timeout + self._block
        self._timer = self._loop.call_at(self._progress + limit, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._pending or self.broken is not None:
            return
        if self._loop.time() - self._progress >= self._timeout + self._block:
            self._fail(rexc.TimeoutError(f"no reply from Redis within {self._timeout:g} s"))
        else:
            self._arm()

    def _fail(self, exc: Exception) -> None:
        if self.broken is None:
            self.broken = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(self.broken)


class Pipe:
    """One lazily (re)connected, multiplexed connection to a single Redis server.

    Calls from any number of coroutines of the owning event loop go out at once and share
    the socket. A pipe used for a blocking command (`BLPOP`) should serve only that.

    Example:
        pipe = Pipe(Endpoint.from_url("redis://localhost:6379/0", 10.0))
        await pipe.call("SET", "k", "v")
        await pipe.aclose()
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._wire: _Wire | None = None
        self._connecting: asyncio.Future[_Wire] | None = None
        self._closed = False

    async def call(self, *args: Any, block: float = 0.0) -> Any:
        """Send one command and return its reply, retrying on a broken connection.

        `block` is how long the command may legitimately take on the server (a `BLPOP`
        timeout), on top of ``socket_timeout``.
        """
        payload = hiredis.pack_command(args)
        wire = self._wire
        if wire is not None and wire.broken is None:
            try:
                return await wire.send(payload, block)
            except (rexc.ConnectionError, rexc.TimeoutError):
                return await self._retrying(payload, block, failures=1)
        return await self._retrying(payload, block)

    async def submit(self, *args: Any, block: float = 0.0) -> tuple[int, asyncio.Future[Any]]:
        """Send one command (connecting first if needed) without waiting for its reply or
        retrying; returns the connection's ``CLIENT ID`` and the reply's future. For a
        blocking command whose caller may have to unblock it (``CLIENT UNBLOCK``) and still
        see its reply (see `Conn.blpop`)."""
        wire = await self._connected()
        if wire.client_id is None:
            ask: tuple[Any, ...] = ("CLIENT", "ID")
            wire.client_id = int(await wire.send(hiredis.pack_command(ask)))
        return wire.client_id, wire.send(hiredis.pack_command(args), block)

    async def many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send `commands` in one write and return their replies in order (the first server
        error is raised). Retried as a whole on a broken connection: use it for reads."""
        if not commands:
            return []
        payload = b"".join([hiredis.pack_command(tuple(c)) for c in commands])
        return list(await self._retrying(payload, 0.0, count=len(commands)))

    async def _retrying(
        self, payload: bytes, block: float, *, count: int = 0, failures: int = 0
    ) -> Any:
        if failures:
            await asyncio.sleep(_BACKOFF.compute(failures))
        while True:
            try:
                wire = await self._connected()
                if count:
                    return await wire.send_many(payload, count)
                return await wire.send(payload, block)
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                failures += 1
                if self._closed or failures > _RETRIES:
                    if isinstance(exc, rexc.RedisError):
                        raise
                    raise rexc.ConnectionError(f"cannot connect to Redis: {exc}") from exc
                await asyncio.sleep(_BACKOFF.compute(failures))

    async def _connected(self) -> _Wire:
        if self._closed:
            raise rexc.ConnectionError("the connection is closed")
        wire = self._wire
        if wire is not None and wire.broken is None:
            return wire
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            try:
                wire = await self._open(loop)
            except BaseException as exc:
                # Callers sharing this connect see a connection error (and retry), never
                # the cancellation of the one caller that happened to open it.
                shared = (
                    exc if isinstance(exc, Exception) else rexc.ConnectionError("connect cancelled")
                )
                self._connecting.set_exception(shared)
                self._connecting.exception()  # retrieved: callers see it via `await`
                self._connecting = None
                raise
            self._wire = wire
            self._connecting.set_result(wire)
            self._connecting = None
            return wire
        return await asyncio.shield(self._connecting)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Wire:
        ep = self.endpoint
        timeout = ep.socket_timeout

        def factory() -> _Wire:
            return _Wire(loop, timeout)

        async with asyncio.timeout(ep.connect_timeout):
            if ep.path is not None:
                _, wire = await loop.create_unix_connection(factory, ep.path)
            else:
                _, wire = await loop.create_connection(
                    factory,
                    ep.host,
                    ep.port,
                    ssl=ep.tls,
                    server_hostname=ep.host if ep.tls is not None else None,
                )
            hello: list[Sequence[Any]] = []
            if ep.password is not None:
                hello.append(
                    ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
                )
            if ep.db:
                hello.append(("SELECT", ep.db))
            try:
                for fut in [wire.send(hiredis.pack_command(tuple(c))) for c in hello]:
                    await fut
            except BaseException:
                wire.close()
                raise
        return wire

    def function(self, library: str, name: str, fallback: str) -> PipeFunction:
        """Function `name` of the FUNCTION `library`, called like a script (loaded on first
        use, and again if the server lost it; `fallback` is the same code as a script)."""
        return PipeFunction(self, library, name, fallback)

    def script(self, text: str) -> PipeScript:
        """A script bound to this pipe, called like redis-py's: ``await s(keys, args)``."""
        return PipeScript(self, text)

    async def aclose(self) -> None:
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    def abandon(self) -> None:
        """Close the socket of a pipe whose event loop has stopped."""
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.abandon()


class PipeScript:
    """A Lua script run with ``EVALSHA`` on a `Pipe`, loaded on ``NOSCRIPT``."""

    __slots__ = ("pipe", "sha", "text")

    def __init__(self, pipe: Pipe, text: str) -> None:
        self.pipe = pipe
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            await self.pipe.call("SCRIPT", "LOAD", self.text)
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)


class PipeFunction:
    """A Redis FUNCTION run with ``FCALL``; its library is loaded when the server lacks it
    (first use, a restart without persistence, ``FUNCTION FLUSH``). Where FUNCTION LOAD is
    refused (an ACL without it, a proxy), the same code runs as a script (`fallback`).
    """

    __slots__ = ("_eval", "fallback", "library", "name", "pipe")

    def __init__(self, pipe: Pipe, library: str, name: str, fallback: str) -> None:
        self.pipe = pipe
        self.library = library
        self.name = name
        self.fallback = fallback
        self._eval: PipeScript | None = None

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if self._eval is not None:
            return await self._eval(keys, args)
        try:
            return await self.pipe.call("FCALL", self.name, len(keys), *keys, *args)
        except rexc.ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
        try:
            await self.pipe.call("FUNCTION", "LOAD", self.library)
        except rexc.ResponseError as exc:
            if "already exists" not in str(exc):  # else loaded meanwhile by someone: fine
                log.warning("FUNCTION LOAD refused (%s); running scripts with EVALSHA", exc)
                self._eval = PipeScript(self.pipe, self.fallback)
                return await self._eval(keys, args)
        return await self.pipe.call("FCALL", self.name, len(keys), *keys, *args)
