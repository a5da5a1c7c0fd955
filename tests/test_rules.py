"""Layer-0 rules: the public namespace, retry backoff, the fake clock, job ids."""

from __future__ import annotations

import asyncio
import random

import pytest

import conveyor
from conveyor.clock import FakeClock
from conveyor.job import new_job_id


def test_public_namespace_is_locked() -> None:
    expected = [
        "App",
        "Batch",
        "BatchStatus",
        "BatchTask",
        "Cancel",
        "Circuit",
        "Clock",
        "ConveyorError",
        "Fail",
        "FakeClock",
        "GroupHandle",
        "Job",
        "JobBatch",
        "JobCancelled",
        "JobContext",
        "JobFailed",
        "JobHandle",
        "JobInfo",
        "JobOptions",
        "JobState",
        "LockLost",
        "LockNotAcquired",
        "NonRetryable",
        "RateLimit",
        "Retry",
        "RetryPolicy",
        "Signature",
        "SystemClock",
        "Task",
        "WorkerConfig",
        "chain",
        "chord",
        "current_job",
        "current_jobs",
        "group",
    ]
    assert sorted(conveyor.__all__) == expected
    for name in conveyor.__all__:
        assert getattr(conveyor, name).__doc__, name


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = conveyor.RetryPolicy(base_delay=1, factor=2, max_delay=10, jitter=0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff(10_000) == 10  # no overflow
    jittery = conveyor.RetryPolicy(base_delay=10, jitter=0.5, max_delay=100)
    rng = random.Random(3)
    samples = [jittery.backoff(1, rng=rng) for _ in range(500)]
    assert min(samples) >= 5
    assert max(samples) <= 15
    assert len(set(samples)) > 400


def test_which_errors_retry() -> None:
    policy = conveyor.RetryPolicy(max_attempts=3, retry_on=(OSError,), dont_retry=(TimeoutError,))
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(ConnectionError(), 3)  # attempts exhausted
    assert not policy.should_retry(TimeoutError(), 1)  # listed as never
    assert not policy.should_retry(ValueError(), 1)  # not in retry_on
    assert not policy.should_retry(conveyor.Fail("x"), 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_delay": -1}, {"factor": 0.5}, {"jitter": 2}],
)
def test_bad_retry_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        conveyor.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_signal_rejects_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay"):
        conveyor.Retry(delay=-1)


async def test_fake_clock_wakes_sleepers_only_when_advanced() -> None:
    clock = FakeClock(start=100)
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.now())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sleeper(5))
        tg.create_task(sleeper(10))
        await asyncio.sleep(0)
        assert clock.sleepers == 2
        clock.advance(5)
        await asyncio.sleep(0)
        assert woke == [105]
        clock.advance(5)
    assert woke == [105, 110]
    with pytest.raises(ValueError, match="advance"):
        clock.advance(-1)
    clock.set(200)
    assert clock.now() == 200
    clock.set(150)  # never backwards
    assert clock.now() == 200


def test_job_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_job_id(1_000.0 + i) for i in range(100)]
    assert ids == sorted(ids)
    assert len({new_job_id(1_000.0) for _ in range(10_000)}) == 10_000  # same ms: random bits
