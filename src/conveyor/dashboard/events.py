"""The overview's live data as Server-Sent Events: one event at once on connect, then one every
~2 s; while the store is down an ``outage`` event instead, and the stream goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from conveyor.capabilities import Presence, Rollups
from conveyor.dashboard.sampler import DepthSampler
from conveyor.inspector import Inspector
from conveyor.job import JobState

__all__ = ["snapshot", "stream"]


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


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def stream(
    request: Request, inspector: Inspector, sampler: DepthSampler, every: float = 2.0
) -> StreamingResponse:
    """The SSE response; ``?limit=N`` ends it after N events (for tests and scripts)."""
    try:
        limit = int(request.query_params.get("limit", "0"))
    except ValueError:
        limit = 0

    async def events() -> AsyncIterator[str]:
        sent = 0
        while True:
            try:
                yield _event("update", await snapshot(inspector, sampler))
            except Exception as exc:  # the store is down: say so and keep going
                yield _event("outage", {"error": f"{type(exc).__name__}: {exc}"})
            sent += 1
            if limit and sent >= limit:
                return
            await asyncio.sleep(every)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
