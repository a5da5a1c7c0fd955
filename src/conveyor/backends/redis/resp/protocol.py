"""The wire: RESP commands out (hiredis packs them), replies in (hiredis parses them).

`Wire` is the `asyncio.Protocol` of one socket: commands are written as they come and replies
are matched to their callers in order, so any number of coroutines share the connection
without waiting for each other. It knows nothing of connecting, retrying or scripts (see
`pipe`). Server errors come back as redis-py's ``ResponseError`` family, a broken or silent
connection as redis-py's ``ConnectionError``/``TimeoutError``, so `connect.wrap_errors`
maps them like any other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import Any

import hiredis
import redis.exceptions as rexc

__all__ = ["Wire", "drop_transport", "pack_command", "server_error"]

pack_command = hiredis.pack_command  # one command's arguments → its RESP bytes

_ERRORS: tuple[tuple[str, type[rexc.RedisError]], ...] = (
    ("NOSCRIPT", rexc.NoScriptError),
    ("LOADING", rexc.BusyLoadingError),
    ("NOAUTH", rexc.AuthenticationError),
    ("WRONGPASS", rexc.AuthenticationError),
    ("NOPERM", rexc.NoPermissionError),
    ("READONLY", rexc.ReadOnlyError),
)


def server_error(reply: hiredis.ReplyError) -> rexc.RedisError:
    """A server's error reply as redis-py's exception for it (``ResponseError`` if none
    more specific)."""
    message = str(reply)
    for prefix, kind in _ERRORS:
        if message.startswith(prefix):
            return kind(message)
    return rexc.ResponseError(message)


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


class Wire(asyncio.Protocol):
    """The socket: commands out as they come, replies matched to callers in order.

    A watchdog fails the connection (and every pending call, with ``TimeoutError``) when no
    reply comes within `timeout` seconds, plus the time a blocking command may take
    (``send(..., block=)``); a caller that gave up is skipped when its reply arrives.
    """

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
                    fut.set_exception(server_error(reply))
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
