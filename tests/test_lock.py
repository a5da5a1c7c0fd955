"""`app.lock`: acquire, wait for a release, renew, lose, release; bad input; sync form."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conveyor
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.errors import ConfigError, InvalidOption, LockLost, LockNotAcquired, StateError
from conveyor.testing import FaultyBackend
from conveyor.testing.redis_server import RedisServer


@pytest.fixture
async def fake() -> AsyncIterator[tuple[conveyor.App, FakeClock]]:
    clock = FakeClock()
    app = conveyor.App(backend=MemoryBackend(clock=clock))
    yield app, clock
    await app.aclose()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lock_is_held_in_the_block_and_freed_after(app: conveyor.App) -> None:
    async with app.lock("report:generate", ttl=60) as lock:
        assert lock.held and lock.token is not None
        (info,) = await app.backend.locks()  # type: ignore[attr-defined]
        assert (info.name, info.token) == ("report:generate", lock.token)
        assert info.owner.startswith(f"{os.uname().nodename}:{os.getpid()}:")
        with pytest.raises(LockNotAcquired, match="report:generate"):
            await app.lock("report:generate", ttl=60).acquire()  # wait=0: one try
        first = lock.token
    assert not lock.held and await app.backend.locks() == []  # type: ignore[attr-defined]
    async with app.lock("report:generate", ttl=60) as again:
        assert again.token is not None and again.token > first  # fencing tokens grow


async def test_owners_are_unique_per_lock(app: conveyor.App) -> None:
    assert app.lock("a", ttl=1).owner != app.lock("a", ttl=1).owner


async def test_a_waiter_is_woken_by_the_release(app: conveyor.App) -> None:
    holder = app.lock("x", ttl=60)
    await holder.acquire()
    got: list[float] = []

    async def wait_for_it() -> None:
        async with app.lock("x", ttl=60, wait=10):
            got.append(time.monotonic())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(wait_for_it())
        await asyncio.sleep(0.05)
        assert got == []
        released = time.monotonic()
        assert await holder.release() is True
    assert got and got[0] - released < 0.5


async def test_not_acquired_within_wait(app: conveyor.App) -> None:
    async with app.lock("x", ttl=60):
        started = time.monotonic()
        with pytest.raises(LockNotAcquired, match=r"within 0\.1 s"):
            async with app.lock("x", ttl=60, wait=0.1):
                pytest.fail("must not run")
        assert 0.09 <= time.monotonic() - started < 2


async def test_a_crashed_holders_lock_is_taken_after_its_ttl() -> None:
    app = conveyor.App("memory://")
    try:
        dead = await app.backend.acquire_lock("x", "crashed", 0.2)  # type: ignore[attr-defined]
        async with app.lock("x", ttl=5, wait=3) as lock:
            assert lock.token is not None and lock.token > dead
    finally:
        await app.aclose()


async def test_a_held_lock_is_renewed_every_third_of_its_ttl(
    fake: tuple[conveyor.App, FakeClock],
) -> None:
    app, clock = fake
    async with app.lock("x", ttl=30):
        for _ in range(4):
            await _settle()  # the renewer is asleep
            clock.advance(10)
            await _settle()
            (info,) = await app.backend.locks()  # type: ignore[attr-defined]
            assert info.expires_at == clock.now() + 30


async def test_a_lost_lock_cancels_the_body_and_raises_lock_lost(
    fake: tuple[conveyor.App, FakeClock],
) -> None:
    app, clock = fake
    entered = asyncio.Event()
    after: list[str] = []

    async def body() -> None:
        try:
            async with app.lock("x", ttl=30) as lock:
                entered.set()
                await asyncio.Event().wait()  # until cancelled
                after.append("not reached")
        except LockLost as exc:
            after.append(f"{exc}; lost={lock.lost}")
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0  # our cancel is not left over

    async with asyncio.TaskGroup() as tg:
        tg.create_task(body())
        await entered.wait()
        await _settle()
        clock.advance(31)  # the renewal comes too late: the store let the lock expire
        other = await app.backend.acquire_lock("x", "other", 30)  # type: ignore[attr-defined]
        assert other is not None
    (message,) = after
    assert "the body was cancelled" in message and message.endswith("lost=True")
    (info,) = await app.backend.locks()  # type: ignore[attr-defined]
    assert info.owner == "other"  # the new holder's lock stands


async def test_on_lost_ignore_keeps_the_body_running(
    fake: tuple[conveyor.App, FakeClock],
) -> None:
    app, clock = fake
    async with app.lock("x", ttl=30, on_lost="ignore") as lock:
        await _settle()
        clock.advance(31)
        await _settle()
        assert lock.lost and not lock.held
    assert lock.lost


async def test_a_loss_found_at_release_raises_with_cancel(
    fake: tuple[conveyor.App, FakeClock],
) -> None:
    app, clock = fake
    lock = app.lock("x", ttl=30)
    await lock.__aenter__()
    clock.set(clock.now() + 31)  # expires without the renewal running in between
    lock._renewer.cancel()  # type: ignore[union-attr]  # as if this process had stopped
    await _settle()
    with pytest.raises(LockLost, match="found at its release"):
        await lock.__aexit__(None, None, None)
    assert lock.lost


async def test_releasing_a_lock_not_held_is_a_state_error(app: conveyor.App) -> None:
    lock = app.lock("x", ttl=10)
    with pytest.raises(StateError, match="not held by this Lock"):
        await lock.release()
    await lock.acquire()
    with pytest.raises(StateError, match="held by this Lock already"):
        await lock.acquire()
    assert await lock.release() is True
    with pytest.raises(StateError, match="not held"):
        await lock.release()
    with pytest.raises(StateError, match="not held"):
        lock.release_sync()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ttl": 0}, ConfigError, "ttl must be"),
        ({"ttl": -1}, ConfigError, "ttl must be"),
        ({"ttl": float("nan")}, ConfigError, "ttl must be"),
        ({"ttl": float("inf")}, ConfigError, "ttl must be"),
        ({"ttl": "5"}, ConfigError, "ttl must be"),
        ({"ttl": True}, ConfigError, "ttl must be"),
        ({"ttl": 5, "wait": -1}, ConfigError, "wait must be"),
        ({"ttl": 5, "wait": float("nan")}, ConfigError, "wait must be"),
        ({"ttl": 5, "on_lost": "explode"}, ConfigError, "on_lost"),
    ],
)
async def test_bad_options_are_refused_and_write_nothing(
    app: conveyor.App, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        app.lock("x", **kwargs)  # type: ignore[arg-type]
    assert await app.backend.locks() == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["", "has space", "new\nline", "-lead", "a" * 201, "é", 7])
async def test_bad_lock_names_are_refused_and_write_nothing(
    app: conveyor.App, name: object
) -> None:
    with pytest.raises(InvalidOption, match="invalid lock name"):
        app.lock(name, ttl=5)  # type: ignore[arg-type]
    assert await app.backend.locks() == []  # type: ignore[attr-defined]


def test_a_store_without_locks_is_refused_at_app_lock() -> None:
    app = conveyor.App("memory://")
    app.backend = object()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"app\.lock\(\) needs the Locks capability"):
        app.lock("x", ttl=5)


def test_the_sync_form_holds_and_renews_on_the_portal(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/j.db")
    try:
        with app.lock("nightly", ttl=0.3) as lock:
            assert lock.token is not None
            with pytest.raises(LockNotAcquired):
                app.lock("nightly", ttl=5).acquire_sync()
            time.sleep(0.5)  # past the ttl: the renewals on the portal keep it
            assert not lock.lost
            with pytest.raises(LockNotAcquired):
                app.lock("nightly", ttl=5).acquire_sync()
        other = app.lock("nightly", ttl=5)
        assert other.acquire_sync() > lock.token
        assert other.release_sync() is True
    finally:
        app.close()


async def test_the_sync_form_refuses_a_running_loop(app: conveyor.App) -> None:
    with pytest.raises(ConfigError, match="inside a running event loop"):
        app.lock("x", ttl=5).acquire_sync()
    assert await app.backend.locks() == []  # type: ignore[attr-defined]


async def test_a_release_in_another_sqlite_connection_wakes_the_waiter(tmp_path: Path) -> None:
    # Two stores on one file stand for two processes: the wake-up comes by data_version.
    async with SQLiteBackend(tmp_path / "j.db") as one, SQLiteBackend(tmp_path / "j.db") as two:
        a = conveyor.App(backend=one)
        b = conveyor.App(backend=two)
        held = await a.lock("x", ttl=30).acquire()
        lock = b.lock("x", ttl=30, wait=10)
        async with asyncio.TaskGroup() as tg:
            waiter = tg.create_task(lock.acquire())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            released = time.monotonic()
            assert await one.release_lock("x", held)
        assert waiter.result() > held and time.monotonic() - released < 0.5
        await lock.release()


async def test_a_release_on_another_redis_connection_wakes_the_waiter(
    redis_server: RedisServer,
) -> None:
    from conveyor.backends.redis import RedisBackend

    url = f"{redis_server.url}?prefix=locktest-{os.getpid()}"
    async with RedisBackend(url) as one, RedisBackend(url) as two:
        b = conveyor.App(backend=two)
        held = await one.acquire_lock("x", "a", 30)
        assert held is not None
        lock = b.lock("x", ttl=30, wait=10)
        async with asyncio.TaskGroup() as tg:
            waiter = tg.create_task(lock.acquire())
            await asyncio.sleep(0.05)
            assert not waiter.done()
            released = time.monotonic()
            assert await one.release_lock("x", held)
        assert waiter.result() > held and time.monotonic() - released < 0.5
        await lock.release()
        assert await one.locks() == []


async def test_renewals_that_fail_are_retried_until_the_ttl_then_the_lock_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend(clock=clock))
    app = conveyor.App(backend=faulty)
    lock = app.lock("x", ttl=30, on_lost="ignore")
    await lock.acquire()
    await _settle()
    faulty.fail("extend_lock")
    clock.advance(10)  # the first renewal fails: retried soon
    await _settle()
    assert not lock.lost and "renewal failed, retrying" in caplog.text
    faulty.heal()
    clock.advance(0.05)
    await _settle()
    assert not lock.lost and faulty.calls["extend_lock"] == 2  # the retry got through
    faulty.fail("extend_lock")
    for _ in range(4):
        clock.advance(10)
        await _settle()
        for _ in range(3):
            clock.advance(0.05)
            await _settle()
    assert lock.lost  # the store stayed out of reach until the holding lapsed
    assert "renewals failed until its ttl passed" in caplog.text
    faulty.heal()
    assert await lock.release() is False
    await app.aclose()
