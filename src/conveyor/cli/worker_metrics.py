"""``conveyor worker -p N --metrics-port P``: one scrape of the supervisor shows the sum.

prometheus_client's multiprocess mode: the supervisor makes a fresh directory and passes it
to its children as ``PROMETHEUS_MULTIPROC_DIR`` (read when prometheus_client is imported, so
it is in their environment from the start), with ``CONVEYOR_METRICS_CHILD=1``. Each child
counts into its own files there (`child_metrics`) and serves no HTTP. The supervisor
serves ``/metrics`` from a `MultiProcessCollector` (counters and histograms summed over
every process that ever ran, gauges summed over the live ones: ``livesum``) plus the store
gauges, read by the supervisor itself (one store read per refresh, not N), on a thread of
its own with its own event loop (the supervisor is sync code). ``/healthz``: 200 while
every child is alive, else 503 naming the dead ones; ``/readyz``: 200 when every child is
ready (``conveyor_worker_ready`` sums to N) and the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from conveyor.app import App
from conveyor.errors import ConfigError, MissingDependency
from conveyor.observability.http import Response, serve_http
from conveyor.serve import Server

__all__ = ["CHILD_ENV", "SupervisorMetrics", "child_metrics"]

log = logging.getLogger("conveyor.cli")

CHILD_ENV = "CONVEYOR_METRICS_CHILD"
_TEXT = "text/plain; charset=utf-8"


def child_metrics(server: Server) -> Callable[[], Coroutine[Any, Any, None]] | None:
    """In a child of a supervisor serving metrics: add the worker's metrics observer and
    return the loop keeping its gauges current (None when not such a child)."""
    if not os.environ.get(CHILD_ENV) or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    from conveyor.observability.prometheus import WorkerMetrics

    worker = server.worker
    metrics = WorkerMetrics(slots=worker.config.concurrency)
    worker.observers.add(metrics)

    async def keep() -> None:
        try:
            while True:
                metrics.running.set(worker.running)
                fetch = worker.fetch
                metrics.ready.set(1.0 if fetch.is_ready and not fetch.stopping else 0.0)
                await asyncio.sleep(0.25)
        finally:
            metrics.ready.set(0.0)

    return keep


class SupervisorMetrics:
    """The supervisor's metrics server (see the module): `start()` before the children,
    `env` for them, `child_exited(pid)` for each that exits, `close()` at the end.

    Args:
        app: the app (its store for the store gauges).
        queues: the worker's ``--queues`` (None: the app's default).
        host: the address to bind.
        port: the port (0 picks one; `port` is the bound one after `start`).
    """

    def __init__(self, app: App, queues: str | None, host: str, port: int) -> None:
        try:
            from prometheus_client import CollectorRegistry
            from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
            from prometheus_client.multiprocess import MultiProcessCollector
        except ImportError:
            raise MissingDependency(
                "--metrics-port needs the metrics extra: pip install 'conveyor[metrics]'"
            ) from None
        self.app = app
        self.queues = queues
        self.host = host
        self.port = port
        #: The live children's pids, and the dead ones' (`supervise` sets it; called on
        #: the server thread).
        self.alive: Callable[[], tuple[list[int], list[int]]] = lambda: ([], [])
        self.dir = tempfile.mkdtemp(prefix="conveyor-metrics-")
        self.env = {"PROMETHEUS_MULTIPROC_DIR": self.dir, CHILD_ENV: "1"}
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.dir)  # type: ignore[no-untyped-call]
        self._generate = generate_latest
        self._ctype = CONTENT_TYPE_LATEST
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="conveyor-metrics", daemon=True)

    def start(self) -> None:
        """Bind and serve on the thread; raises `ConfigError` (port in use) here."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self.close()
            raise self._error

    def child_exited(self, pid: int) -> None:
        """Forget a dead child's live gauges (its counters stay in the sums)."""
        from prometheus_client.multiprocess import mark_process_dead

        with contextlib.suppress(OSError):
            mark_process_dead(pid, self.dir)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop serving and remove the directory."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # the thread's end: told to start(), else logged
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.exception("the metrics server failed")

    async def _serve(self) -> None:
        from conveyor.observability.prometheus import StoreGauges

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.app:
            names = self.app.worker(self.queues).config.queue_names
            store = StoreGauges(self.app.backend, names, self.app.clock)
            self.registry.register(store)

            async def handle(path: str) -> Response:
                if path == "/metrics":
                    await store.refresh()
                    return 200, self._ctype, self._generate(self.registry)
                live, dead = self.alive()
                if path == "/healthz":
                    if dead:
                        pids = ", ".join(map(str, dead))
                        return 503, _TEXT, f"unhealthy: worker processes {pids} died\n".encode()
                    return 200, _TEXT, b"ok\n"
                if path == "/readyz":
                    ready = self.registry.get_sample_value("conveyor_worker_ready") or 0
                    if dead or ready < len(live):
                        return (
                            503,
                            _TEXT,
                            (
                                f"not ready: {int(ready)} of {len(live) + len(dead)} worker "
                                "processes claim jobs\n"
                            ).encode(),
                        )
                    if not await store.refresh(store.timeout):
                        return 503, _TEXT, f"not ready: {store.error}\n".encode()
                    return 200, _TEXT, b"ready\n"
                return 404, _TEXT, b"not found\n"

            try:
                server = await serve_http(self.host, self.port, handle)
            except ConfigError as exc:
                self._error = exc
                self._started.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            log.info(
                "metrics of every worker process on http://%s:%d/metrics", self.host, self.port
            )
            try:
                await self._stop.wait()
            finally:
                server.close()
                await store.close()
