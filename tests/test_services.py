"""Services: started in order with a readiness handshake, stopped in reverse; the server's
own list; maintenance as a service that logs a store outage in one line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import conveyor
from conveyor.backends.memory import MemoryBackend
from conveyor.scheduler import Maintenance
from conveyor.testing import FaultyBackend
from conveyor.worker.service import Service, ServiceGroup


class Probe(Service):
    """Records its life in a shared journal; gets ready when `go` is set."""

    def __init__(self, name: str, journal: list[str], *, ends: bool = False) -> None:
        super().__init__()
        self.name = name
        self.journal = journal
        self.go = asyncio.Event()
        self.ends = ends

    async def run(self) -> None:
        self.journal.append(f"start {self.name}")
        await self.go.wait()
        self.started()
        if self.ends:
            self.journal.append(f"end {self.name}")
            return
        await self._stop.wait()
        await asyncio.sleep(0.01)  # something to finish: the next stop must wait for it
        self.journal.append(f"stopped {self.name}")


async def test_started_in_order_each_ready_first_stopped_in_reverse() -> None:
    journal: list[str] = []
    a, b, c = (Probe(n, journal) for n in "abc")
    group = ServiceGroup([a, b, c])
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(group.run())
        await asyncio.sleep(0.02)
        assert journal == ["start a"]  # b waits for a's readiness
        a.go.set()
        await asyncio.sleep(0.02)
        assert journal == ["start a", "start b"]
        b.go.set()
        c.go.set()
        await asyncio.wait_for(group.ready(), 1)
        assert group.is_ready and not run.done()
        group.stop()
    assert journal[3:] == ["stopped c", "stopped b", "stopped a"]


async def test_a_service_ending_stops_the_rest() -> None:
    journal: list[str] = []
    a, b = Probe("a", journal), Probe("b", journal, ends=True)
    a.go.set()
    b.go.set()
    await asyncio.wait_for(ServiceGroup([a, b]).run(), 1)
    assert journal == ["start a", "start b", "end b", "stopped a"]


async def test_a_stop_before_ready_starts_no_more() -> None:
    journal: list[str] = []
    a, b = Probe("a", journal), Probe("b", journal)
    group = ServiceGroup([a, b])
    async with asyncio.TaskGroup() as tg:
        tg.create_task(group.run())
        await asyncio.sleep(0.01)
        group.stop()
        await asyncio.sleep(0.01)
        a.go.set()  # a was told to stop; it finishes once it can
    assert journal == ["start a", "stopped a"]
    assert not group.is_ready


async def test_a_failing_service_cancels_the_others_and_raises() -> None:
    journal: list[str] = []

    class Broken(Service):
        name = "broken"

        async def run(self) -> None:
            self.started()
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

    a = Probe("a", journal)
    a.go.set()
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(ServiceGroup([a, Broken()]).run(), 1)
    assert [str(e) for e in info.value.exceptions] == ["boom"]
    assert journal == ["start a"]  # cancelled, not stopped


async def test_server_services_in_start_order(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")
    names = [s.name for s in app.worker().services]
    # SQLite has Presence (and, with schema v6, Rollups): observability comes first.
    assert names[-5:] == ["settle", "heartbeat", "jobs", "fetch", "maintenance"]
    assert names[:-5] == ["rollups", "presence", "stuck"]
    assert [s.name for s in app.worker(maintenance=False).services][-1] == "fetch"
    quiet = app.worker(presence=False, rollups=False)
    assert [s.name for s in quiet.services] == [
        "stuck",
        "settle",
        "heartbeat",
        "jobs",
        "fetch",
        "maintenance",
    ]
    await app.aclose()


async def test_server_is_ready_once_the_worker_claims(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")
    server = app.worker(maintenance=False)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.run())
        await asyncio.wait_for(server.ready(), 5)
        assert all(s.is_ready for s in server.services)
        server.stop()
    assert all(s.stopping for s in server.services)
    await app.aclose()


async def test_maintenance_logs_an_outage_once_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = conveyor.FakeClock()
    faulty = FaultyBackend(MemoryBackend(clock=clock))
    maintenance = Maintenance(faulty, clock, sweep_every=1.0)
    faulty.fail("promote")
    caplog.set_level(logging.WARNING, logger="conveyor.maintenance")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(maintenance.run())
        await asyncio.wait_for(maintenance.ready(), 1)
        for _ in range(5):
            await asyncio.sleep(0)
            clock.advance(1.0)
            await asyncio.sleep(0.01)
        faulty.heal()
        clock.advance(1.0)
        await asyncio.sleep(0.01)
        maintenance.stop()
    assert maintenance.stats.errors >= 5
    records = [r for r in caplog.records if r.name == "conveyor.maintenance"]
    messages = [r.getMessage() for r in records]
    assert len(messages) == 2, messages
    assert "maintenance pass failed (injected fault: promote failed)" in messages[0]
    assert messages[1] == "maintenance: the store answers again"
    assert all(r.exc_info is None for r in records)
