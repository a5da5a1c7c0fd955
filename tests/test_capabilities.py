"""Capabilities through the real stores: limits shared via counters, `require`, faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.capabilities import Counters, Locks, Presence, require
from conveyor.clock import FakeClock
from conveyor.errors import BackendError, ConfigError
from conveyor.primitives import RateLimiter
from conveyor.testing import FaultyBackend


async def test_a_rate_limit_is_shared_through_a_sqlite_file(tmp_path: Path) -> None:
    # Two stores on one file stand for two processes: one limit of 3 per second for both.
    clock = FakeClock()
    async with (
        SQLiteBackend(tmp_path / "j.db", clock=clock) as one,
        SQLiteBackend(tmp_path / "j.db", clock=clock) as two,
    ):
        a = RateLimiter(rate=3, counters=one, key="smtp", clock=clock)
        b = RateLimiter(rate=3, counters=two, key="smtp", clock=clock)
        taken = [await a.try_acquire(), await b.try_acquire(), await a.try_acquire()]
        assert taken == [True, True, True]
        assert not await b.try_acquire() and not await a.try_acquire()
        clock.advance(1.0)  # the next window
        assert await b.try_acquire()


def test_a_missing_capability_names_the_store_and_the_feature() -> None:
    class Plain:
        def __repr__(self) -> str:
            return "<PlainStore>"

    with pytest.raises(ConfigError) as info:
        require(Plain(), Locks, "app.lock()")
    message = str(info.value)
    assert "app.lock()" in message and "Locks" in message and "<PlainStore>" in message


async def test_every_shipped_store_provides_every_capability(tmp_path: Path) -> None:
    async with MemoryBackend() as memory, SQLiteBackend(tmp_path / "j.db") as sqlite:
        for store in (memory, sqlite, FaultyBackend(memory)):
            for capability in (Counters, Locks, Presence):
                assert require(store, capability, "test") is store


async def test_faults_reach_capabilities_by_name() -> None:
    faulty = FaultyBackend(MemoryBackend(clock=FakeClock()))
    assert await faulty.acquire_lock("x", "me", 10) == 1
    faulty.fail("acquire_lock", "incr")
    with pytest.raises(BackendError, match="injected fault: acquire_lock"):
        await faulty.acquire_lock("x", "me", 10)
    with pytest.raises(BackendError, match="injected fault: incr"):
        await faulty.incr("k", 1, 10)
    assert await faulty.release_lock("x", 1) is True  # other operations still work
    faulty.heal()
    assert await faulty.acquire_lock("x", "me", 10) == 2
    assert faulty.calls["acquire_lock"] == 3
