"""The contract of `Rollups` (`conveyor.capabilities`): per-minute sums, added and read back.

Times come from the suite's `FakeClock`; rows are placed in minutes relative to it.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor.capabilities import Rollup, Rollups, require
from conveyor.clock import FakeClock
from conveyor.errors import InvalidOption
from conveyor.rollup import RollupBuffer, summarize

__all__ = ["RollupsContract"]

DAY = 86_400.0


def _minute(clock: FakeClock, back: int = 0) -> int:
    """The start of the minute `back` minutes before the clock's."""
    return int(clock.now() // 60) * 60 - 60 * back


def _by_key(rows: list[Rollup]) -> dict[tuple[int, str, str], dict[str, float]]:
    return {(r.minute, r.queue, r.task): r.values for r in rows}


class RollupsContract:
    """`Rollups`: values add up per (minute, queue, task); ranges, queues and retention."""

    async def test_values_add_up_per_minute_queue_and_task(
        self, backend: object, clock: FakeClock
    ) -> None:
        store = require(backend, Rollups, "the rollups contract")
        m0, m1 = _minute(clock, 1), _minute(clock)
        await store.add_rollups(
            [
                Rollup(minute=m0, queue="default", task="a", values={"completed": 2, "d3": 2}),
                Rollup(minute=m0, queue="default", task="b", values={"failed": 1}),
                Rollup(minute=m1, queue="emails", task="a", values={"completed": 1}),
            ],
            keep_for=DAY,
        )
        await store.add_rollups(
            [
                Rollup(
                    minute=m0,
                    queue="default",
                    task="a",
                    values={"completed": 3, "duration_sum": 0.25},
                )
            ],
            keep_for=DAY,
        )
        rows = await store.rollups(m0 - 120)
        assert [(r.minute, r.queue, r.task) for r in rows] == [
            (m0, "default", "a"),
            (m0, "default", "b"),
            (m1, "emails", "a"),
        ]  # by minute, then queue, then task
        got = _by_key(rows)
        assert got[(m0, "default", "a")] == {"completed": 5, "d3": 2, "duration_sum": 0.25}
        assert got[(m0, "default", "b")] == {"failed": 1}

    async def test_a_range_and_a_queue_select_rows(self, backend: object, clock: FakeClock) -> None:
        store = require(backend, Rollups, "the rollups contract")
        minutes = [_minute(clock, back) for back in (90, 30, 2, 0)]
        await store.add_rollups(
            [Rollup(minute=m, queue="q", task="t", values={"completed": 1}) for m in minutes]
            + [Rollup(minute=minutes[2], queue="other", task="t", values={"completed": 7})],
            keep_for=DAY,
        )
        hour = await store.rollups(clock.now() - 3600)
        assert [(r.minute, r.queue) for r in hour] == [
            (minutes[1], "q"),
            (minutes[2], "other"),
            (minutes[2], "q"),
            (minutes[3], "q"),
        ]
        # `since` inside a minute includes that minute; `until` excludes its own minute.
        window = await store.rollups(minutes[2] + 30, minutes[3])
        assert [(r.minute, r.queue) for r in window] == [(minutes[2], "other"), (minutes[2], "q")]
        only = await store.rollups(clock.now() - 7200, queue="q")
        assert [r.minute for r in only] == minutes
        assert await store.rollups(clock.now() + 60) == []

    async def test_a_minute_past_its_retention_is_not_kept(
        self, backend: object, clock: FakeClock
    ) -> None:
        store = require(backend, Rollups, "the rollups contract")
        old = _minute(clock, 10)  # ended 9 minutes ago
        await store.add_rollups(
            [
                Rollup(minute=old, queue="q", task="gone", values={"completed": 1}),
            ],
            keep_for=60,
        )
        await store.add_rollups(
            [Rollup(minute=old, queue="q", task="kept", values={"completed": 1})], keep_for=DAY
        )
        assert [r.task for r in await store.rollups(old)] == ["kept"]

    async def test_bad_rows_are_refused_and_nothing_is_written(
        self, backend: object, clock: FakeClock
    ) -> None:
        store = require(backend, Rollups, "the rollups contract")
        m = _minute(clock)
        good = Rollup(minute=m, queue="q", task="t", values={"completed": 1})
        bad_rows = [
            Rollup(minute=m + 1, queue="q", task="t", values={"completed": 1}),
            Rollup(minute=m, queue="bad queue", task="t", values={"completed": 1}),
            Rollup(minute=m, queue="q", task="t", values={"Bad-Name": 1}),
            Rollup(minute=m, queue="q", task="t", values={"completed": float("nan")}),
        ]
        for bad in bad_rows:
            with pytest.raises(InvalidOption):
                await store.add_rollups([good, bad], keep_for=DAY)
        with pytest.raises(InvalidOption):
            await store.add_rollups([good], keep_for=0)
        assert await store.rollups(m - 60) == []
        await store.add_rollups([], keep_for=DAY)  # nothing to add is fine

    async def test_concurrent_adds_lose_nothing(self, backend: object, clock: FakeClock) -> None:
        store = require(backend, Rollups, "the rollups contract")
        m = _minute(clock)
        row = Rollup(minute=m, queue="q", task="t", values={"completed": 1, "duration_sum": 0.5})
        await asyncio.gather(*(store.add_rollups([row], keep_for=DAY) for _ in range(40)))
        (got,) = await store.rollups(m)
        assert got.values == {"completed": 40, "duration_sum": 20.0}

    async def test_a_buffer_round_trips_into_a_report(
        self, backend: object, clock: FakeClock
    ) -> None:
        store = require(backend, Rollups, "the rollups contract")
        buffer = RollupBuffer()
        now = clock.now()
        for i in range(100):
            buffer.add(
                at=now, queue="default", task="send", outcome="completed",
                duration=0.010 * (i + 1), wait=0.001,
            )  # fmt: skip
        for _ in range(10):
            buffer.add(
                at=now, queue="default", task="send", outcome="failed", duration=0.5, wait=0.0
            )
        await store.add_rollups(buffer.take(), keep_for=DAY)
        assert len(buffer) == 0
        report = summarize(await store.rollups(now - 3600), since=now - 3600, until=now + 1)
        (send,) = report.groups
        assert (send.name, send.completed, send.failed) == ("send", 100, 10)
        assert send.failure_rate == pytest.approx(10 / 110)
        assert 0.4 < send.duration_p50 < 0.6  # about 0.5 s, within a bucket's width
        assert send.throughput[-1][1:] == (100, 10)
        assert report.total.completed == 100
