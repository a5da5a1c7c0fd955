"""A worker's metrics and health endpoints: a tiny asyncio HTTP/1.1 server, no dependency.

`MetricsServer` is a worker `Service` (started first, stopped last) serving, on
``WorkerConfig.metrics_host:metrics_port``:

- ``GET /metrics``: the Prometheus text exposition (`conveyor.observability.prometheus`);
  the store gauges come from a cache that scrapes refresh (see `StoreGauges`).
- ``GET /healthz``: 200 ``ok`` while the event loop runs (answering proves it).
- ``GET /readyz``: 200 ``ready`` once the worker claims jobs and while the store answers;
  else 503 with a one-line reason.

Anything else is a 404 (a method other than GET or HEAD: 405). One request per
connection (``Connection: close``): scrapers and probes open one per request anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from conveyor.backends.base import Backend
from conveyor.clock import Clock
from conveyor.errors import ConfigError, MissingDependency
from conveyor.worker import Worker, WorkerConfig
from conveyor.worker.service import Service

if TYPE_CHECKING:
    from conveyor.observability.prometheus import StoreGauges, WorkerMetrics

__all__ = ["MetricsServer", "Response", "serve_http"]

log = logging.getLogger("conveyor.worker")

#: A response: status, content type, body.
Response = tuple[int, str, bytes]
Handler = Callable[[str], Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_TEXT = "text/plain; charset=utf-8"
_READ_TIMEOUT = 10.0  # seconds a client has to send its request head
_MAX_HEAD = 16_384


async def serve_http(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Start a server answering GET/HEAD requests with `handler(path)`.

    Raises:
        ConfigError: the port is in use, or the address cannot be bound (one clear line).
    """

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, handler)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    try:
        return await asyncio.start_server(on_client, host, port, limit=_MAX_HEAD)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"metrics port {port} on {host} is in use") from None
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        status, ctype, body = 400, _TEXT, b"bad request\n"
        method = "GET"
    else:
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, ctype, body = 405, _TEXT, b"method not allowed\n"
        else:
            try:
                status, ctype, body = await handler(path)
            except Exception:
                log.exception("metrics: %s failed", path)
                status, ctype, body = 500, _TEXT, b"internal error\n"
    headers = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\nCache-Control: no-store\r\n\r\n"
    )
    writer.write(headers.encode("latin-1") + (b"" if method == "HEAD" else body))
    await writer.drain()


class MetricsServer(Service):
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` for one worker (see the module).

    The lead service of a worker process: `serve.Server` starts it first, stops it last,
    and adds `metrics` to the worker's observers.

    Args:
        worker: the worker whose metrics and readiness are served.
        backend: the store (read at scrape time for the store gauges).
        config: the worker's config (``metrics_port``, ``metrics_host``, ``concurrency``).
        clock: the time source.

    Raises:
        MissingDependency: prometheus_client is not installed (``conveyor[metrics]``).
    """

    name = "metrics"

    def __init__(
        self, worker: Worker, backend: Backend, config: WorkerConfig, clock: Clock
    ) -> None:
        super().__init__()
        try:
            from conveyor.observability import prometheus
        except ImportError:
            raise MissingDependency(
                "--metrics-port needs the metrics extra: pip install 'conveyor[metrics]'"
            ) from None
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self._generate = generate_latest
        self._ctype = CONTENT_TYPE_LATEST
        self.worker = worker
        self.host = config.metrics_host
        self._want = config.metrics_port or 0
        #: The observer: add it to `worker.observers`; has `stuck_reported(kind)`.
        self.metrics: WorkerMetrics = prometheus.WorkerMetrics(
            slots=config.concurrency, running=lambda: worker.running
        )
        fetch = worker.fetch
        self.metrics.ready.set_function(lambda: float(fetch.is_ready and not fetch.stopping))
        #: The store gauges (a collector on `metrics.registry`).
        self.store: StoreGauges = prometheus.StoreGauges(backend, config.queue_names, clock)
        self.metrics.registry.register(self.store)
        #: The bound port (the chosen one for port 0); None until serving.
        self.port: int | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the server (once serving)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def run(self) -> None:
        server = await serve_http(self.host, self._want, self.handle)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        log.info("metrics on %s/metrics", self.url)
        await self.store.refresh(0)  # the first read starts now, not at the first scrape
        self.started()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await self.store.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def handle(self, path: str) -> Response:
        """The response to a GET of `path`."""
        if path == "/metrics":
            await self.store.refresh()
            return 200, self._ctype, self._generate(self.metrics.registry)
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            if not self.worker.fetch.is_ready:
                return 503, _TEXT, b"not ready: the worker is not claiming jobs yet\n"
            if self.worker.fetch.stopping:
                return 503, _TEXT, b"not ready: the worker is stopping\n"
            if not await self.store.refresh(self.store.timeout):
                return 503, _TEXT, f"not ready: {self.store.error}\n".encode()
            return 200, _TEXT, b"ready\n"
        return 404, _TEXT, b"not found\n"
