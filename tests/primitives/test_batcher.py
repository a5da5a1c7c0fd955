"""Unit tests of Batcher: flushing rules, overflow, errors, retries, cancellation, close."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conveyor.clock import FakeClock
from conveyor.errors import ClosedError, ConveyorError, Dropped, QueueFull
from conveyor.primitives import Batcher
from conveyor.retry import RetryPolicy

from .helpers import advance, echo_handler, spin


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_size": 0}, "max_size must be >= 1"),
        ({"capacity": 0}, "capacity must be >= 1"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"max_wait": -0.1}, "max_wait must be >= 0"),
        ({"overflow": "explode"}, "overflow must be one of"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(echo_handler([]), **kwargs)  # type: ignore[arg-type]


async def test_use_before_enter_is_a_clear_error() -> None:
    batcher = Batcher(echo_handler([]))
    with pytest.raises(RuntimeError, match="use `async with`"):
        await batcher.submit(1)
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit_nowait(1)
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.flush()


async def test_enter_twice_is_refused() -> None:
    batcher = Batcher(echo_handler([]))
    async with batcher:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        await batcher.__aenter__()


async def test_idle_item_is_flushed_alone_with_natural_batching() -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls)) as batcher:
        assert await batcher.submit(21) == 42
    assert calls == [[21]]


async def test_natural_batching_gathers_items_that_arrive_during_a_flush() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def slow(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        await gate.wait()
        return list(items)

    async with Batcher(slow, max_size=100) as batcher:
        first = batcher.submit_nowait(0)
        await spin()
        assert calls == [[0]]  # idle: flushed at once, alone
        rest = [batcher.submit_nowait(i) for i in range(1, 51)]
        await spin()
        assert len(calls) == 1  # the only slot is busy
        gate.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == list(range(1, 51))
    assert calls == [[0], list(range(1, 51))]


async def test_concurrent_submits_in_one_tick_form_one_batch() -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls), max_size=100) as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(30)))
    assert results == [i * 2 for i in range(30)]
    assert calls == [list(range(30))]


async def test_flushes_at_max_size_without_waiting(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls), max_size=3, max_wait=10, clock=clock) as batcher:
        futs = [batcher.submit_nowait(i) for i in range(7)]
        await spin()
        assert calls == [[0, 1, 2], [3, 4, 5]]
        assert not futs[6].done()
        await advance(clock, 10)
        assert calls[-1] == [6]
        assert await asyncio.gather(*futs) == [i * 2 for i in range(7)]


async def test_flushes_max_wait_after_the_first_item(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls), max_size=10, max_wait=1.0, clock=clock) as batcher:
        batcher.submit_nowait(1)
        await advance(clock, 0.5)
        batcher.submit_nowait(2)
        await advance(clock, 0.25)
        assert calls == []
        await advance(clock, 0.125)
        assert calls == []
        await advance(clock, 0.125)  # 1.0 s after the *first* item
        assert calls == [[1, 2]]
        assert batcher.stats().max_wait_observed == pytest.approx(1.0)


async def test_flush_sends_waiting_items_now_and_waits_for_them(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls), max_size=10, max_wait=60, clock=clock) as batcher:
        futs = [batcher.submit_nowait(i) for i in range(4)]
        await batcher.flush()
        assert all(f.done() for f in futs)
        assert calls == [[0, 1, 2, 3]]
        await batcher.flush()  # nothing waiting: returns at once


async def test_max_concurrency_bounds_handler_calls_in_flight() -> None:
    running = 0
    peak = 0

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return list(items)

    async with Batcher(handler, max_size=2, max_concurrency=3) as batcher:
        assert await batcher.submit_many(range(40)) == list(range(40))
        assert batcher.stats().max_batch_size <= 2
    assert peak == 3


async def test_per_item_exceptions_reach_their_own_callers() -> None:
    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    async with Batcher(handler) as batcher:
        out = await batcher.submit_many(range(4))
        assert out[0] == 0
        assert out[2] == 2
        assert isinstance(out[1], ValueError)
        assert str(out[3]) == "odd 3"
        with pytest.raises(ValueError, match="odd 5"):
            await batcher.submit(5)
    stats = batcher.stats()
    assert (stats.completed, stats.failed) == (2, 3)


async def test_handler_that_raises_fails_every_item_of_its_batch() -> None:
    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        raise OSError("store down")

    async with Batcher(handler) as batcher:
        out = await batcher.submit_many(range(3))
    assert all(isinstance(e, OSError) and str(e) == "store down" for e in out)


async def test_wrong_number_of_results_fails_the_batch_clearly() -> None:
    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        return [1]

    async with Batcher(handler, name="settle") as batcher:
        out = await batcher.submit_many(range(3))
    for err in out:
        assert isinstance(err, ConveyorError)
        assert "'settle'" in str(err)
        assert "returned 1 results for a batch of 3 items" in str(err)


async def test_failed_items_retry_alone_with_backoff(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    failures = {2: 2}  # item 2 fails twice, then succeeds

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        out: list[int | BaseException] = []
        for i in items:
            if failures.get(i, 0) > 0:
                failures[i] -= 1
                out.append(OSError(f"flaky {i}"))
            else:
                out.append(i)
        return out

    policy = RetryPolicy(max_attempts=3, base_delay=5, factor=2, jitter=0)
    async with Batcher(handler, retry=policy, clock=clock) as batcher:
        fut = batcher.submit_nowait(2)
        others = [batcher.submit_nowait(i) for i in (1, 3)]
        await spin()
        assert calls == [[2, 1, 3]]
        assert await asyncio.gather(*others) == [1, 3]
        await advance(clock, 4.9)
        assert len(calls) == 1  # backoff not over
        await advance(clock, 0.1)
        assert calls[-1] == [2]
        await advance(clock, 10)
        assert calls[-1] == [2]
        assert await fut == 2
        stats = batcher.stats()
    assert (stats.retried, stats.completed, stats.failed) == (2, 3, 0)


async def test_retries_stop_at_max_attempts_and_skip_non_retryable(clock: FakeClock) -> None:
    attempts: dict[int, int] = {}

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        for i in items:
            attempts[i] = attempts.get(i, 0) + 1
        return [KeyError(i) if i == 0 else OSError(i) for i in items]

    policy = RetryPolicy(max_attempts=2, base_delay=1, jitter=0, dont_retry=(KeyError,))
    async with Batcher(handler, retry=policy, clock=clock) as batcher:
        futs = [batcher.submit_nowait(i) for i in (0, 1)]
        await advance(clock, 1)
        with pytest.raises(KeyError):
            await futs[0]
        with pytest.raises(OSError, match="1"):
            await futs[1]
    assert attempts == {0: 1, 1: 2}


async def test_reject_policy_raises_queue_full() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=2, overflow="reject") as batcher:
        busy = batcher.submit_nowait(0)
        await spin()  # item 0 is in flight, the queue is empty
        queued = [batcher.submit_nowait(1), batcher.submit_nowait(2)]
        with pytest.raises(QueueFull, match="full"):
            batcher.submit_nowait(3)
        with pytest.raises(QueueFull):
            await batcher.submit(3)
        gate.set()
        assert await asyncio.gather(busy, *queued) == [0, 1, 2]


async def test_drop_oldest_fails_the_oldest_waiting_item() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=2, overflow="drop_oldest") as batcher:
        busy = batcher.submit_nowait(0)
        await spin()
        futs = [batcher.submit_nowait(i) for i in (1, 2, 3)]
        with pytest.raises(Dropped):
            await futs[0]
        gate.set()
        assert await asyncio.gather(busy, futs[1], futs[2]) == [0, 2, 3]
        assert batcher.stats().dropped == 1


async def test_drop_newest_refuses_the_new_item() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=1, overflow="drop_newest") as batcher:
        busy = batcher.submit_nowait(0)
        await spin()
        kept = batcher.submit_nowait(1)
        with pytest.raises(Dropped):
            await batcher.submit(2)
        out = await batcher.submit_many([3])  # still full: refused at once, in place
        assert isinstance(out[0], Dropped)
        gate.set()
        assert await asyncio.gather(busy, kept) == [0, 1]


async def test_block_policy_waits_for_room() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=1) as batcher:
        busy = batcher.submit_nowait(0)
        await spin()
        queued = batcher.submit_nowait(1)
        with pytest.raises(QueueFull):
            batcher.submit_nowait(2)  # nowait cannot block
        blocked = asyncio.ensure_future(batcher.submit(2))
        await spin()
        assert not blocked.done()
        assert batcher.stats().queue_depth == 1
        gate.set()
        assert await asyncio.gather(busy, queued, blocked) == [0, 1, 2]


async def test_cancelled_blocked_submitter_passes_its_turn_on() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=1) as batcher:
        busy = batcher.submit_nowait(0)
        await spin()
        queued = batcher.submit_nowait(1)
        first = asyncio.ensure_future(batcher.submit(2))
        second = asyncio.ensure_future(batcher.submit(3))
        await spin()
        first.cancel()
        gate.set()
        assert await asyncio.gather(busy, queued, second) == [0, 1, 3]
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_caller_cancelled_before_flush_is_skipped(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    async with Batcher(echo_handler(calls), max_size=10, max_wait=1, clock=clock) as batcher:
        doomed = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await spin()
        doomed.cancel()
        await advance(clock, 1)
        assert await kept == 4
        assert calls == [[2]]
        assert batcher.stats().cancelled == 1


async def test_caller_cancelled_during_flush_does_not_break_the_batch() -> None:
    gate = asyncio.Event()
    seen: list[list[int]] = []

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        seen.append(list(items))
        await gate.wait()
        return list(items)

    async with Batcher(handler) as batcher:
        doomed = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await spin()
        assert seen == [[1, 2]]
        doomed.cancel()
        await spin()
        gate.set()
        assert await kept == 2
        assert await batcher.submit(3) == 3
    assert doomed.cancelled()


async def test_aclose_drains_everything_then_refuses(clock: FakeClock) -> None:
    calls: list[list[int]] = []
    batcher = Batcher(echo_handler(calls), max_size=2, max_wait=100, clock=clock)
    async with batcher:
        futs = [batcher.submit_nowait(i) for i in range(5)]
        await batcher.aclose()
        assert all(f.done() for f in futs)
        with pytest.raises(ClosedError, match="closed"):
            await batcher.submit(9)
        with pytest.raises(ClosedError):
            await batcher.submit_many([9])
    assert sorted(i for call in calls for i in call) == list(range(5))
    await batcher.aclose()  # idempotent


async def test_aclose_finishes_pending_retries(clock: FakeClock) -> None:
    tries = 0

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal tries
        tries += 1
        return [OSError("once")] if tries == 1 else list(items)

    policy = RetryPolicy(max_attempts=2, base_delay=3, jitter=0)
    async with Batcher(handler, retry=policy, clock=clock) as batcher:
        fut = batcher.submit_nowait(7)
        await spin()
        closing = asyncio.ensure_future(batcher.aclose())
        await advance(clock, 3)
        await closing
        assert await fut == 7


async def test_blocked_submitters_get_closed_error_at_close() -> None:
    gate = asyncio.Event()

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async with Batcher(handler, max_size=1, capacity=1) as batcher:
        batcher.submit_nowait(0)
        await spin()
        queued = batcher.submit_nowait(1)
        blocked = asyncio.ensure_future(batcher.submit(2))
        await spin()
        closing = asyncio.ensure_future(batcher.aclose())
        await spin()
        with pytest.raises(ClosedError):
            await blocked
        gate.set()
        await closing
        assert await queued == 1


async def test_cancelling_the_owner_fails_every_accepted_item() -> None:
    gate = asyncio.Event()
    futs: list[asyncio.Future[int]] = []

    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        await gate.wait()
        return list(items)

    async def owner() -> None:
        async with Batcher(handler, max_size=1) as batcher:
            futs.extend(batcher.submit_nowait(i) for i in range(3))
            await asyncio.Event().wait()

    task = asyncio.ensure_future(owner())
    await spin()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for fut in futs:
        with pytest.raises(ClosedError, match="cancelled"):
            await fut


async def test_error_in_body_still_drains() -> None:
    calls: list[list[int]] = []
    futs: list[asyncio.Future[int]] = []

    async def body() -> None:
        async with Batcher(echo_handler(calls), max_wait=5) as batcher:
            futs.append(batcher.submit_nowait(1))
            raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):  # as is, not wrapped in a group
        await body()
    assert await futs[0] == 2


async def test_stats_count_what_happened() -> None:
    async def handler(items: Sequence[int]) -> list[int | BaseException]:
        return [i if i else ValueError("zero") for i in items]

    async with Batcher(handler, max_size=4) as batcher:
        await batcher.submit_many(range(10))
        stats = batcher.stats()
    assert stats.submitted == 10
    assert (stats.completed, stats.failed) == (9, 1)
    assert stats.batches == 3
    assert stats.max_batch_size == 4
    assert stats.mean_batch_size == pytest.approx(10 / 3)
    assert (stats.queue_depth, stats.in_flight, stats.retry_pending) == (0, 0, 0)
