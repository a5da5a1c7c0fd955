"""`Pipe`: one multiplexed connection to a single Redis server, for the hot path.

What it serves (see `conveyor.backends.redis.connect`): on a single server, the backend's
scripts, its reads and, on pipes of their own (one per concurrent ``BLPOP``), its blocking
waits. redis-py serves Redis Cluster and the start-up checks.

Why not redis-py here: its asyncio client spends about 250 µs of CPU per command on this kind
of machine (a pool checkout, locks, several loop turns), against about 120 µs for the bare
socket round trip. A job costs a few commands (enqueue, claim, settle), so that overhead was
most of Conveyor's per-job cost and all of its idle latency. A `Pipe` writes each command to
the socket at once and resolves replies in order (see `protocol.Wire`), so any number of
coroutines share one connection: concurrent calls are pipelined for free.

Failure handling matches what the redis-py client did for us: a call that fails because the
connection broke (refused, reset, or no reply within ``socket_timeout``) is retried up to three
times with jittered exponential backoff on a fresh connection, then raised as redis-py's
``ConnectionError``/``TimeoutError`` so `connect.wrap_errors` maps it like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rexc
from redis.backoff import ExponentialWithJitterBackoff

from conveyor.backends.redis.resp.endpoint import Endpoint
from conveyor.backends.redis.resp.protocol import Wire, pack_command
from conveyor.backends.redis.resp.scripting import PipeFunction, PipeScript

__all__ = ["Pipe"]

_RETRIES = 3
_BACKOFF = ExponentialWithJitterBackoff(cap=0.5, base=0.02)


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
        self._wire: Wire | None = None
        self._connecting: asyncio.Future[Wire] | None = None
        self._closed = False

    async def call(self, *args: Any, block: float = 0.0) -> Any:
        """Send one command and return its reply, retrying on a broken connection.

        `block` is how long the command may legitimately take on the server (a `BLPOP`
        timeout), on top of ``socket_timeout``.
        """
        payload = pack_command(args)
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
            wire.client_id = int(await wire.send(pack_command(ask)))
        return wire.client_id, wire.send(pack_command(args), block)

    async def many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send `commands` in one write and return their replies in order (the first server
        error is raised). Retried as a whole on a broken connection: use it for reads."""
        if not commands:
            return []
        payload = b"".join([pack_command(tuple(c)) for c in commands])
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

    async def _connected(self) -> Wire:
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

    async def _open(self, loop: asyncio.AbstractEventLoop) -> Wire:
        ep = self.endpoint
        timeout = ep.socket_timeout

        def factory() -> Wire:
            return Wire(loop, timeout)

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
            try:
                for fut in [wire.send(pack_command(c)) for c in ep.hello()]:
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
