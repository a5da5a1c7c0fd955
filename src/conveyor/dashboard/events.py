"""The overview's live data as Server-Sent Events: one event at once on connect, then one every
~2 s; while the store is down an ``outage`` event instead, and the stream goes on."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from conveyor.capabilities import Presence, Rollups
from conveyor.dashboard.sampler import DepthSampler
from conveyor.inspector import Inspector
from conveyor.job import JobState

__all__ = ["Snapshots", "Streams", "snapshot", "stream"]


async def snapshot(inspector: Inspector, sampler: DepthSampler) -> dict[str, object]:
    """Totals by state, workers online and the three charts' points for the last hour."""
    stats = await inspector.stats()
    totals = {s.value: sum(q[s] for q in stats) for s in JobState}
    workers = len(await inspector.workers()) if isinstance(inspector.backend, Presence) else 0
    throughput: list[list[float]] = []
    latency: list[list[float]] = []
    if isinstance(inspector.backend, Rollups):
        report = await inspector.metrics(3600.0)
        throughput = [[m, c, f] for m, c, f in report.total.throughput]
        latency = [[m, p50, p95] for m, p50, p95 in getattr(report.total, "latency", ())]
    queues = sorted({q for _, depth in sampler.samples for q in depth})
    depth = [[t, *(d.get(q, 0) for q in queues)] for t, d in sampler.samples]
    return {
        "totals": totals,
        "workers": workers,
        "throughput": throughput,
        "latency": latency,
        "depth": {"queues": queues, "points": depth},
    }


class Snapshots:
    """`snapshot` shared by every SSE client for `ttl` seconds: the counts behind the totals
    are a scan of the jobs table on SQLite (~170 ms at 1,000,000 jobs), so ten open
    overviews cost one scan per period, not ten."""

    def __init__(self, inspector: Inspector, sampler: DepthSampler, ttl: float = 1.5) -> None:
        self.inspector = inspector
        self.sampler = sampler
        self.ttl = ttl
        self._lock = asyncio.Lock()
        self._at = -math.inf
        self._last: dict[str, object] = {}

    async def get(self) -> dict[str, object]:
        async with self._lock:  # one query at a time; the waiters get its answer
            if time.monotonic() - self._at >= self.ttl:
                self._last = await snapshot(self.inspector, self.sampler)
                self._at = time.monotonic()
            return self._last


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class Streams:
    """The open SSE streams' shared stop: `close` (callable from any thread) ends every
    stream within ~0.25 s. A server waits for open responses before it stops (uvicorn does),
    so call it before stopping the server; each stream also ends by itself after `max_age`
    seconds (the browser's EventSource reconnects within a second and gets an event at once).
    """

    def __init__(self, every: float = 2.0, max_age: float = 60.0) -> None:
        self.every = every
        self.max_age = max_age
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    async def pause(self, ends: float) -> bool:
        """Sleep until the next event is due; False if the stream should end instead."""
        due = time.monotonic() + self.every
        while not self.closed.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return time.monotonic() < ends
            await asyncio.sleep(min(left, 0.25))
        return False


def stream(request: Request, snapshots: Snapshots, streams: Streams) -> StreamingResponse:
    """The SSE response; ``?limit=N`` ends it after N events (for tests and scripts)."""
    try:
        limit = int(request.query_params.get("limit", "0"))
    except ValueError:
        limit = 0
    ends = time.monotonic() + streams.max_age

    async def events() -> AsyncIterator[str]:
        sent = 0
        yield "retry: 1000\n\n"
        while True:
            try:
                yield _event("update", await snapshots.get())
            except Exception as exc:  # the store is down: say so and keep going
                yield _event("outage", {"error": f"{type(exc).__name__}: {exc}"})
            sent += 1
            if limit and sent >= limit:
                return
            if not await streams.pause(ends):
                return

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
