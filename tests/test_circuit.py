"""The in-process CircuitBreaker: closed → open → half-open → closed, on a FakeClock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.clock import FakeClock
from conveyor.errors import CircuitOpen, ConfigError
from conveyor.flow import Circuit
from conveyor.primitives import CircuitBreaker


class Down(Exception):
    """The dependency failed."""


class NotFound(Exception):
    """The dependency answered "no such thing": not a failure of the dependency."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


def breaker(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    settings: dict[str, object] = {"failure_rate": 0.5, "window": 10, "cooldown": 30}
    settings["min_calls"] = kwargs.pop("min_calls", 4)
    settings.update({k: kwargs.pop(k) for k in list(kwargs) if k in settings})
    return CircuitBreaker(Circuit(**settings), clock=clock, **kwargs)  # type: ignore[arg-type]


class Service:
    """A fake dependency that records each call it receives."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    async def __call__(self, value: int = 0) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failing:
            raise Down(f"down for {value}")
        return value * 2


async def fail(b: CircuitBreaker, service: Service, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Down):
            await b.call(service, 1)


async def test_closed_passes_results_and_errors_through(clock: FakeClock) -> None:
    b, service = breaker(clock), Service()
    assert await b.call(service, 21) == 42
    service.failing = True
    with pytest.raises(Down, match="down for 3"):
        await b.call(service, 3)
    stats = b.statistics()
    assert (stats.state, stats.calls, stats.failures, stats.opened) == ("closed", 2, 1, 0)


async def test_opens_at_the_failure_rate_once_min_calls_are_counted(clock: FakeClock) -> None:
    b, service = breaker(clock, min_calls=4), Service()
    service.failing = True
    await fail(b, service, 3)  # 3 of 3 failed, but fewer than min_calls
    assert b.state == "closed"
    service.failing = False
    assert await b.call(service, 1) == 2  # 3 of 4 failed: a success never opens it
    assert b.state == "closed"
    service.failing = True
    await fail(b, service, 1)  # 4 of 5 ≥ 50 %
    assert b.state == "open"
    calls = service.calls
    with pytest.raises(CircuitOpen) as info:
        await b.call(service, 1)
    assert service.calls == calls  # failed fast: the dependency was not called
    assert info.value.remaining == pytest.approx(30)
    assert "is open for another 30.0 s because 4 of the last 5 calls failed" in str(info.value)
    assert b.statistics().rejected == 1


async def test_below_the_rate_it_stays_closed(clock: FakeClock) -> None:
    b, service = breaker(clock, failure_rate=0.5, min_calls=4), Service()
    for i in range(40):
        service.failing = i % 3 == 2  # a third fail
        try:
            await b.call(service, i)
        except Down:
            pass
    assert b.state == "closed" and service.calls == 40


async def test_exactly_the_failure_rate_opens_it(clock: FakeClock) -> None:
    b, service = breaker(clock, failure_rate=0.3, min_calls=10), Service()
    for _ in range(7):
        await b.call(service)
    service.failing = True
    await fail(b, service, 2)
    assert b.state == "closed"  # 2 of 9
    await fail(b, service, 1)  # 3 of 10 = 30 %
    assert b.state == "open"


async def test_failures_older_than_the_window_do_not_count(clock: FakeClock) -> None:
    b, service = breaker(clock, window=10, min_calls=4), Service()
    service.failing = True
    await fail(b, service, 3)
    clock.advance(10.5)  # they left the window
    await fail(b, service, 3)
    assert b.state == "closed", b.statistics()
    assert b.statistics().calls == 3
    await fail(b, service, 1)  # 4 recent failures
    assert b.state == "open"


async def test_remaining_time_counts_down_then_one_probe_is_let_through(
    clock: FakeClock,
) -> None:
    b, service = breaker(clock, cooldown=30), Service()
    service.failing = True
    await fail(b, service, 4)
    clock.advance(12)
    with pytest.raises(CircuitOpen) as info:
        await b.call(service)
    assert info.value.remaining == pytest.approx(18)
    clock.advance(18)
    assert b.state == "half-open"

    release = asyncio.Event()
    probe_calls: list[int] = []

    async def slow_probe() -> str:
        probe_calls.append(1)
        await release.wait()
        return "ok"

    probe = asyncio.create_task(b.call(slow_probe))
    await asyncio.sleep(0)
    # Exactly one probe at a time: the others fail fast while it runs.
    for _ in range(3):
        with pytest.raises(CircuitOpen, match="half-open and its one probe call") as info:
            await b.call(service)
        assert info.value.remaining == 0.0
    release.set()
    assert await probe == "ok"
    assert probe_calls == [1]
    assert b.state == "closed"
    service.failing = False
    assert await b.call(service, 2) == 4
    assert b.statistics().calls == 1  # a closed circuit starts a fresh window


async def test_a_failed_probe_opens_it_for_another_cooldown(clock: FakeClock) -> None:
    b, service = breaker(clock, cooldown=30), Service()
    service.failing = True
    await fail(b, service, 4)
    clock.advance(30)
    await fail(b, service, 1)  # the probe
    assert b.state == "open"
    with pytest.raises(CircuitOpen, match="because the probe call failed \\(Down\\)") as info:
        await b.call(service)
    assert info.value.remaining == pytest.approx(30)
    assert b.statistics().opened == 2


async def test_a_cancelled_probe_frees_the_slot_for_the_next(clock: FakeClock) -> None:
    b, service = breaker(clock), Service()
    service.failing = True
    await fail(b, service, 4)
    clock.advance(30)
    probe = asyncio.create_task(b.call(asyncio.sleep, 100))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert b.state == "half-open"
    service.failing = False
    assert await b.call(service, 5) == 10  # the next probe, which closes it
    assert b.state == "closed"


async def test_async_with_and_the_decorator_share_the_machine(clock: FakeClock) -> None:
    b, service = breaker(clock, name="crm"), Service()

    @b
    async def push(value: int) -> int:
        """Push one contact."""
        return await service(value)

    assert push.__doc__ == "Push one contact." and push.__name__ == "push"
    assert await push(4) == 8
    service.failing = True
    with pytest.raises(Down):
        await push(1)
    for _ in range(2):
        with pytest.raises(Down):
            async with b:
                await service(1)
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as info:
        async with b:
            pytest.fail("the body must not run while open")
    assert info.value.name == "crm" and "circuit 'crm' is open" in str(info.value)
    with pytest.raises(CircuitOpen):
        await push(1)


async def test_async_with_in_concurrent_tasks_keeps_each_outcome(clock: FakeClock) -> None:
    b = breaker(clock, min_calls=4, failure_rate=0.75)

    async def one(fails: bool, gate: asyncio.Event) -> None:
        async with b:
            await gate.wait()
            if fails:
                raise Down("x")

    gates = [asyncio.Event() for _ in range(4)]
    tasks = [asyncio.create_task(one(i < 2, g)) for i, g in enumerate(gates)]
    await asyncio.sleep(0)
    for g in reversed(gates):  # finish in the opposite order to the start
        g.set()
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [Down, Down, type(None), type(None)]
    stats = b.statistics()
    assert (stats.state, stats.calls, stats.failures) == ("closed", 4, 2)


async def test_only_the_listed_exception_types_are_failures(clock: FakeClock) -> None:
    b = breaker(clock, failures=(Down,), min_calls=2)

    async def missing() -> None:
        raise NotFound("no such contact")

    for _ in range(5):
        with pytest.raises(NotFound):
            await b.call(missing)
    stats = b.statistics()
    assert (stats.state, stats.calls, stats.failures) == ("closed", 5, 0)


async def test_calls_that_started_before_it_opened_do_not_count_after(
    clock: FakeClock,
) -> None:
    b, service = breaker(clock, min_calls=4), Service()
    gate = asyncio.Event()

    async def late() -> None:
        await gate.wait()
        raise Down("late")

    straggler = asyncio.create_task(b.call(late))
    await asyncio.sleep(0)
    service.failing = True
    await fail(b, service, 4)
    assert b.state == "open"
    clock.advance(30)
    assert b.state == "half-open"
    gate.set()
    with pytest.raises(Down):
        await straggler
    assert b.state == "half-open"  # the straggler was no probe: it changed nothing
    service.failing = False
    await b.call(service)
    assert b.state == "closed"


async def test_trip_and_reset_by_hand(clock: FakeClock) -> None:
    b, service = breaker(clock, cooldown=5), Service()
    b.trip()
    with pytest.raises(CircuitOpen, match="because it was opened by hand"):
        await b.call(service)
    assert b.statistics().remaining == pytest.approx(5)
    b.reset()
    assert b.state == "closed" and await b.call(service, 1) == 2


async def test_memory_stays_bounded_under_many_calls(clock: FakeClock) -> None:
    b, service = breaker(clock, window=10, failure_rate=1.0), Service()
    for _ in range(2000):
        await b.call(service)
        clock.advance(0.05)
    assert len(b._buckets) <= 21
    assert b.statistics().calls <= 200


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"takes a conveyor\.flow\.Circuit"):
        CircuitBreaker({"failure_rate": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="failures must be a tuple of exception types"):
        CircuitBreaker(Circuit(0.5, 1, 1), failures=(Down, "Timeout"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="failure_rate must be in \\(0, 1\\]"):
        Circuit(failure_rate=1.5, window=1, cooldown=1)

    def sync() -> None: ...

    with pytest.raises(ConfigError, match="decorates async functions"):
        CircuitBreaker(Circuit(0.5, 1, 1))(sync)  # type: ignore[arg-type]


# -- a property test against the rules ------------------------------------------------------

Step = tuple[str, float]
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["ok", "fail"]), st.just(0.0)),
        st.tuples(st.just("wait"), st.sampled_from([0.1, 0.7, 2.5, 9.0, 31.0])),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=steps,
    rate=st.sampled_from([0.2, 0.5, 1.0]),
    min_calls=st.integers(1, 6),
)
def test_every_transition_follows_the_rules(ops: list[Step], rate: float, min_calls: int) -> None:
    asyncio.run(_check_rules(ops, rate, min_calls))


async def _check_rules(ops: list[Step], rate: float, min_calls: int) -> None:
    window, cooldown = 10.0, 30.0
    clock = FakeClock(start=1000.0)
    b = CircuitBreaker(Circuit(rate, window, cooldown, min_calls=min_calls), clock=clock)
    counted: list[tuple[float, bool]] = []  # closed-state outcomes since the last change
    opened_at: float | None = None
    ran = 0
    for op, dt in ops:
        if op == "wait":
            clock.advance(dt)
            continue
        now = clock.monotonic()
        before = b.statistics()
        if before.state == "closed":
            recent = [t for t, _ in counted if t >= now - window - 1e-9]
            sure = [t for t, _ in counted if t > now - 0.95 * window + 1e-9]
            assert len(sure) <= before.calls <= len(recent), (before, counted, now)
        if opened_at is not None and before.state != "closed":
            # Open for exactly the cooldown, then half-open.
            assert before.state == ("open" if now < opened_at + cooldown else "half-open")

        async def dependency(fail: bool = op == "fail") -> None:
            nonlocal ran
            ran += 1
            if fail:
                raise Down

        calls = ran
        refused: CircuitOpen | None = None
        try:
            await b.call(dependency)
        except CircuitOpen as exc:
            refused = exc
        except Down:
            pass
        if refused is not None:
            assert before.state == "open" and ran == calls  # refused without running
            assert opened_at is not None
            assert refused.remaining == pytest.approx(opened_at + cooldown - now)
            continue
        assert ran == calls + 1
        after = b.state
        failed = op == "fail"
        if before.state == "half-open":  # the probe decides
            assert after == ("open" if failed else "closed")
        elif failed:
            n, f = before.calls + 1, before.failures + 1
            should_open = n >= min_calls and f >= rate * n - 1e-9
            assert after == ("open" if should_open else "closed"), (before, n, f)
        else:
            assert after == "closed"  # a success never opens it
        if after != before.state:
            counted.clear()
            opened_at = now if after == "open" else None
        elif after == "closed":
            counted.append((now, failed))
