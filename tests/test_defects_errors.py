"""Every library error is in the tree: configuration mistakes are `ConfigError` (still a
`ValueError`), misuse is `StateError` (still a `RuntimeError`), closed objects `ClosedError`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from conveyor import errors
from conveyor.clock import FakeClock
from conveyor.errors import ClosedError, ConfigError, ConveyorError, Retry, StateError
from conveyor.primitives import (
    Batcher,
    CapacityLimiter,
    Channel,
    Loader,
    MemoryCache,
    Pipeline,
    PriorityBatcher,
    RateLimiter,
)
from conveyor.retry import RetryPolicy


async def _echo(items: Sequence[int]) -> list[int | BaseException]:
    return list(items)


async def _source(keys: Sequence[int]) -> dict[int, int]:
    return {k: k for k in keys}


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy(max_attempts=0),
        lambda: RetryPolicy(base_delay=-1),
        lambda: RetryPolicy(factor=0.5),
        lambda: RetryPolicy(jitter=2),
        lambda: Retry(delay=-1),
        lambda: Retry(delay=float("nan")),
        lambda: FakeClock().advance(-1),
        lambda: Batcher(_echo, max_size=0),
        lambda: Batcher(_echo, overflow="explode"),  # type: ignore[arg-type]
        lambda: PriorityBatcher(_echo, max_wait=-1),
        lambda: Channel(-1),
        lambda: Loader(_source, max_batch_size=0),
        lambda: Loader(_source, ttl=0),
        lambda: RateLimiter(0),
        lambda: RateLimiter(1, burst=0),
        lambda: RateLimiter(1, key="k"),  # a key without counters
        lambda: CapacityLimiter(0),
        lambda: MemoryCache(0),
        lambda: Pipeline(range(1), buffer=0),
        lambda: Pipeline(range(1)).batch(1, wait=-1),
        lambda: Pipeline(range(1)).map(_echo, concurrency=0),  # type: ignore[arg-type]
    ],
)
def test_configuration_mistakes_are_config_errors(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert isinstance(info.value, ValueError)  # what callers caught before still works


async def test_rate_limiter_request_larger_than_its_burst_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"within \[1, 2\]"):
        await RateLimiter(1, burst=2, clock=FakeClock()).acquire(3)


async def test_misuse_is_a_state_error() -> None:
    batcher = Batcher(_echo)
    with pytest.raises(StateError, match="use `async with`"):
        await batcher.submit(1)
    async with batcher:
        pass
    with pytest.raises(StateError, match="entered once"):
        await batcher.__aenter__()
    with pytest.raises(ClosedError):
        await batcher.submit(1)

    loader: Loader[int, int] = Loader(_source)
    with pytest.raises(StateError, match="use `async with`"):
        loader.load(1)
    with pytest.raises(StateError, match="needs a cache tier"):
        await loader.prime(1, 1)
    async with loader:
        pass
    with pytest.raises(StateError, match="entered once"):
        await loader.__aenter__()

    with pytest.raises(StateError, match="without a matching acquire"):
        CapacityLimiter(1).release()


def test_state_errors_are_runtime_errors_and_closed_is_one_of_them() -> None:
    assert issubclass(StateError, ConveyorError) and issubclass(StateError, RuntimeError)
    assert issubclass(ClosedError, StateError)
    assert issubclass(ConfigError, ValueError)


def test_the_drawn_tree_names_every_error_class() -> None:
    doc = errors.__doc__ or ""
    classes = [
        name
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), ConveyorError)
    ]
    assert classes
    for name in classes:
        assert f"── {name} " in doc or f"    {name}\n" in doc, name
