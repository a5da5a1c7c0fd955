"""The flow-control contract: lanes take turns, and their slots, buckets and circuits hold.

A job with a `lane` is served through that lane of its queue (`Backend.claim` has the
rules); `FlowControl` shows lanes and opens or closes circuits by hand. Every store runs
these unchanged, on a `FakeClock`, so buckets and cooldowns are stepped, not waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import pytest

from conveyor.backends.base import Backend, ClaimRequest
from conveyor.capabilities import FlowControl, LaneInfo, QueueControl, require
from conveyor.clock import FakeClock
from conveyor.errors import InvalidOption
from conveyor.job import Cancelled, Completed, Failed, Job, JobState, Lease, Retrying
from conveyor.testing.contract.core import CoreContract, err, make_job

__all__ = ["FlowContract"]

W = "worker-1"
LEASE = 30.0
# failure_rate 0.5, window 10 s, cooldown 30 s, min_calls 4
CIRCUIT = "0.5:10:30:4"


class FlowContract(CoreContract):
    """Lanes: turns, concurrency slots, rate buckets, circuits. Subclasses provide `backend`."""

    async def _lane(
        self, backend: Backend, clock: FakeClock, lane: str, n: int, **fields: object
    ) -> list[Job]:
        jobs = [make_job(clock, lane=lane, **fields) for _ in range(n)]
        assert await backend.enqueue(jobs) == [j.id for j in jobs]
        return jobs

    async def _claim(self, backend: Backend, n: int = 1000, queue: str = "default") -> list[Lease]:
        return await backend.claim(ClaimRequest([queue], n, LEASE, W))

    async def _done(self, backend: Backend, leases: Sequence[Lease]) -> None:
        assert await backend.settle([(lease, Completed(b"1")) for lease in leases]) == [True] * len(
            leases
        )

    async def _info(self, backend: Backend, lane: str, queue: str = "default") -> LaneInfo:
        lanes = await require(backend, FlowControl, "the flow contract").lanes(queue)
        found = [info for info in lanes if info.lane == lane]
        assert len(found) == 1, lanes
        return found[0]

    # -- turns -----------------------------------------------------------------------------

    async def test_lanes_take_turns(self, backend: Backend, clock: FakeClock) -> None:
        a = await self._lane(backend, clock, "a", 6)
        b = await self._lane(backend, clock, "b", 6)
        got = await self._claim(backend, 4)
        lanes = Counter(lease.job.lane for lease in got)
        assert lanes == {"a": 2, "b": 2}
        # inside a lane, enqueue order
        assert [lease.id for lease in got if lease.job.lane == "a"] == [j.id for j in a[:2]]
        assert [lease.id for lease in got if lease.job.lane == "b"] == [j.id for j in b[:2]]

    async def test_a_lane_is_served_its_weight_per_turn(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "heavy", 10, weight=2)
        await self._lane(backend, clock, "light", 10)
        got = await self._claim(backend, 6)
        assert Counter(lease.job.lane for lease in got) == {"heavy": 4, "light": 2}

    async def test_plain_jobs_take_turns_as_one_lane(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        plain = [make_job(clock) for _ in range(6)]
        await backend.enqueue(plain)
        await self._lane(backend, clock, "a", 6)
        got = await self._claim(backend, 4)
        assert Counter(lease.job.lane for lease in got) == {"": 2, "a": 2}

    async def test_a_big_lane_enqueued_first_does_not_starve_a_small_one(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "big", 200)
        small = await self._lane(backend, clock, "small", 5)
        seen: list[str] = []
        for _ in range(2):
            got = await self._claim(backend, 5)
            seen += [lease.id for lease in got]
            await self._done(backend, got)
        assert {j.id for j in small} <= set(seen)

    async def test_an_idle_lane_earns_no_credit(self, backend: Backend, clock: FakeClock) -> None:
        await self._lane(backend, clock, "a", 30)
        await self._done(backend, await self._claim(backend, 10))  # a alone: 10 turns
        await self._lane(backend, clock, "b", 30)
        got = await self._claim(backend, 6)
        assert Counter(lease.job.lane for lease in got) == {"a": 3, "b": 3}

    async def test_priority_orders_jobs_inside_a_lane(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        low = await self._lane(backend, clock, "a", 2)
        high = await self._lane(backend, clock, "a", 1, priority=5)
        got = await self._claim(backend, 3)
        assert [lease.id for lease in got] == [high[0].id, low[0].id, low[1].id]

    async def test_lanes_are_per_queue(self, backend: Backend, clock: FakeClock) -> None:
        await self._lane(backend, clock, "x", 3, concurrency=1)
        await self._lane(backend, clock, "x", 3, concurrency=1, queue="other")
        assert len(await self._claim(backend)) == 1
        assert len(await self._claim(backend, queue="other")) == 1
        assert {i.queue for i in await require(backend, FlowControl, "t").lanes()} >= {
            "default",
            "other",
        }

    async def test_a_paused_queue_gives_no_lane_job(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "a", 2)
        await require(backend, QueueControl, "t").pause("default")
        assert await self._claim(backend) == []
        await require(backend, QueueControl, "t").resume("default")
        assert len(await self._claim(backend)) == 2

    # -- concurrency -----------------------------------------------------------------------

    async def test_concurrency_caps_running_jobs_of_a_lane(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "c", 5, concurrency=2)
        first = await self._claim(backend)
        assert len(first) == 2
        assert await self._claim(backend) == []
        info = await self._info(backend, "c")
        assert (info.ready, info.running, info.concurrency) == (3, 2, 2)
        await self._done(backend, first[:1])
        assert len(await self._claim(backend)) == 1
        assert await self._claim(backend) == []

    async def test_a_full_lane_does_not_hold_back_the_jobs_behind_it(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "c", 50, concurrency=1, priority=9)
        plain = [make_job(clock) for _ in range(20)]
        await backend.enqueue(plain)
        got = await self._claim(backend, 21)
        assert Counter(lease.job.lane for lease in got) == {"c": 1, "": 20}
        assert len(await self._claim(backend, 5)) == 0

    async def test_concurrency_one_runs_a_lane_in_enqueue_order(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        jobs = await self._lane(backend, clock, "acct:1", 5, concurrency=1)
        await self._lane(backend, clock, "acct:2", 5, concurrency=1)
        order: list[str] = []
        while True:
            got = await self._claim(backend)
            if not got:
                break
            assert Counter(lease.job.lane for lease in got).most_common(1)[0][1] == 1
            order += [lease.id for lease in got if lease.job.lane == "acct:1"]
            await self._done(backend, got)
        assert order == [j.id for j in jobs]

    @pytest.mark.parametrize(
        "exit_path",
        ["completed", "retrying", "failed", "cancelled", "released", "rescued", "cancel_at_beat"],
    )
    async def test_every_exit_from_running_gives_the_slot_back(
        self, backend: Backend, clock: FakeClock, exit_path: str
    ) -> None:
        await self._lane(backend, clock, "c", 3, concurrency=1)
        (lease,) = await self._claim(backend)
        assert await self._claim(backend) == []
        exits: dict[str, Callable[[], Awaitable[object]]] = {
            "completed": lambda: backend.settle([(lease, Completed(None))]),
            "retrying": lambda: backend.settle([(lease, Retrying(clock.now(), err()))]),
            "failed": lambda: backend.settle([(lease, Failed(err()))]),
            "cancelled": lambda: backend.settle([(lease, Cancelled("x"))]),
            "released": lambda: backend.release([lease]),
        }
        if exit_path == "rescued":
            clock.advance(LEASE + 1)
            assert await backend.rescue() == 1
        elif exit_path == "cancel_at_beat":
            assert await backend.cancel(lease.id) is JobState.RUNNING
            assert await backend.extend([lease], LEASE) == [None]
        else:
            await exits[exit_path]()
        assert len(await self._claim(backend)) == 1
        assert (await self._info(backend, "c")).running == 1

    async def test_a_waiting_worker_is_woken_when_a_slot_comes_back(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "c", 2, concurrency=1)
        (lease,) = await self._claim(backend)
        waiter = asyncio.ensure_future(backend.wait(["default"], 10.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await self._done(backend, [lease])
        await asyncio.wait_for(waiter, 5.0)
        assert time.monotonic() - started < 5.0
        assert len(await self._claim(backend)) == 1

    async def test_a_lane_job_released_by_its_parent_keeps_to_the_lane(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = make_job(clock)
        children = [make_job(clock, lane="c", concurrency=1, parents=(parent.id,)) for _ in "ab"]
        await backend.enqueue([parent, *children])
        await self._done(backend, await self._claim(backend))  # the parent
        assert len(await self._claim(backend)) == 1

    async def test_a_scheduled_lane_job_keeps_to_the_lane_when_due(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "c", 3, concurrency=1, delay=5.0)
        assert await self._claim(backend) == []
        clock.advance(6)
        assert len(await self._claim(backend)) == 1

    async def test_the_latest_job_to_become_ready_sets_the_limits(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "c", 2, concurrency=1)
        await self._lane(backend, clock, "c", 2, concurrency=3, weight=2)
        info = await self._info(backend, "c")
        assert (info.concurrency, info.weight, info.ready) == (3, 2, 4)
        assert len(await self._claim(backend)) == 3

    # -- rate ------------------------------------------------------------------------------

    async def test_a_rate_lane_starts_with_a_full_bucket_then_refills(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        jobs = await self._lane(backend, clock, "r", 10, rate=2.0, burst=2)
        assert len(await self._claim(backend)) == 2
        assert await self._claim(backend) == []
        clock.advance(0.5)
        assert len(await self._claim(backend)) == 1
        clock.advance(5)  # the bucket holds no more than burst
        assert len(await self._claim(backend)) == 2
        held = await backend.get([j.id for j in jobs[5:]])
        assert all(j is not None and j.state is JobState.QUEUED and j.attempts == 0 for j in held)
        info = await self._info(backend, "r")
        assert (info.rate, info.burst, info.ready) == (2.0, 2, 5)
        assert 0 <= info.tokens < 1

    async def test_a_rate_lane_out_of_tokens_lets_plain_jobs_by(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "r", 100, rate=1.0, burst=1, priority=9)
        await backend.enqueue([make_job(clock) for _ in range(10)])
        got = await self._claim(backend, 50)
        assert Counter(lease.job.lane for lease in got) == {"r": 1, "": 10}

    async def test_wait_returns_when_the_next_token_is_due(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "r", 3, rate=5.0, burst=1)
        assert len(await self._claim(backend)) == 1
        started = time.monotonic()
        await backend.wait(["default"], 10.0)
        assert time.monotonic() - started < 3.0

    # -- circuit ---------------------------------------------------------------------------

    async def _fail(self, backend: Backend, clock: FakeClock, leases: Sequence[Lease]) -> None:
        outcomes = [(lease, Retrying(clock.now(), err())) for lease in leases]
        assert await backend.settle(outcomes) == [True] * len(leases)

    async def test_a_circuit_opens_at_its_failure_rate_then_probes_once(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "api", 4, circuit=CIRCUIT, max_attempts=10)
        await backend.enqueue([make_job(clock)])
        got = await self._claim(backend)
        assert Counter(lease.job.lane for lease in got) == {"api": 4, "": 1}
        await self._done(backend, [lease for lease in got if lease.job.lane == ""])
        await self._fail(backend, clock, [lease for lease in got if lease.job.lane == "api"])
        info = await self._info(backend, "api")
        assert info.circuit_state == "open"
        assert info.open_until == pytest.approx(clock.now() + 30)
        assert (info.ready, info.calls, info.failures) == (4, 4, 4)
        clock.advance(10)
        assert await self._claim(backend) == []  # still cooling down: nothing attempted
        held = await backend.get([lease.id for lease in got if lease.job.lane == "api"])
        assert all(j is not None and j.attempts == 1 for j in held)
        clock.advance(21)
        (probe,) = await self._claim(backend)  # half-open: one probe at a time
        assert (await self._info(backend, "api")).circuit_state == "half_open"
        assert await self._claim(backend) == []
        await self._fail(backend, clock, [probe])  # the probe failed: open again
        assert (await self._info(backend, "api")).circuit_state == "open"
        assert await self._claim(backend) == []
        clock.advance(31)
        (probe,) = await self._claim(backend)
        await self._done(backend, [probe])
        assert (await self._info(backend, "api")).circuit_state == "closed"
        assert len(await self._claim(backend)) == 3

    async def test_a_circuit_below_its_rate_or_min_calls_stays_closed(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "few", 3, circuit=CIRCUIT, max_attempts=10)
        await self._fail(backend, clock, await self._claim(backend))  # 3 of 3, min_calls 4
        info = await self._info(backend, "few")
        assert (info.circuit_state, info.calls, info.failures) == ("closed", 3, 3)
        await self._lane(backend, clock, "rare", 6, circuit=CIRCUIT, max_attempts=10)
        got = [lease for lease in await self._claim(backend) if lease.job.lane == "rare"]
        await self._done(backend, got[:4])
        await self._fail(backend, clock, got[4:])  # 2 of 6: under 0.5
        info = await self._info(backend, "rare")
        assert (info.circuit_state, info.calls, info.failures) == ("closed", 6, 2)

    async def test_failures_of_an_earlier_window_do_not_count(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "api", 8, circuit=CIRCUIT, max_attempts=10)
        await self._fail(backend, clock, await self._claim(backend, 3))
        clock.advance(11)  # a new window
        await self._fail(backend, clock, await self._claim(backend, 3))
        info = await self._info(backend, "api")
        assert (info.circuit_state, info.calls) == ("closed", 3)

    async def test_a_rescued_job_counts_as_a_failure(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "api", 4, circuit=CIRCUIT, max_attempts=10)
        assert len(await self._claim(backend)) == 4
        clock.advance(LEASE + 1)
        assert await backend.rescue() == 4
        assert (await self._info(backend, "api")).circuit_state == "open"

    async def test_a_released_probe_lets_the_next_job_probe(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "api", 6, circuit=CIRCUIT, max_attempts=10)
        await self._fail(backend, clock, await self._claim(backend, 4))
        clock.advance(31)
        (probe,) = await self._claim(backend)
        assert await backend.release([probe]) == [True]
        (probe,) = await self._claim(backend)
        assert await self._claim(backend) == []
        await self._done(backend, [probe])
        assert (await self._info(backend, "api")).circuit_state == "closed"

    async def test_a_circuit_opened_and_closed_by_hand(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, FlowControl, "the flow contract")
        await self._lane(backend, clock, "api", 3, circuit=CIRCUIT)
        assert await control.set_circuit("default", "api", "open") == "closed"
        clock.advance(3600)
        assert await self._claim(backend) == []  # open with no duration: until closed
        info = await self._info(backend, "api")
        assert (info.circuit_state, info.open_until) == ("open", None)
        assert await control.set_circuit("default", "api", "closed") == "open"
        assert len(await self._claim(backend)) == 3

    async def test_a_lane_opened_by_hand_for_a_while_runs_again_after(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, FlowControl, "the flow contract")
        assert await control.set_circuit("default", "later", "open", duration=60) == "closed"
        await self._lane(backend, clock, "later", 2)
        assert await self._claim(backend) == []
        clock.advance(61)
        assert len(await self._claim(backend)) == 2

    async def test_bad_circuit_changes_are_refused(self, backend: Backend) -> None:
        control = require(backend, FlowControl, "the flow contract")
        with pytest.raises(InvalidOption, match="'open' or 'closed'"):
            await control.set_circuit("default", "api", "ajar")
        with pytest.raises(InvalidOption, match="duration"):
            await control.set_circuit("default", "api", "open", duration=0)
        with pytest.raises(InvalidOption):
            await control.set_circuit("default", "", "open")
        with pytest.raises(InvalidOption):
            await control.set_circuit("bad queue!", "api", "open")
        assert [i for i in await control.lanes() if i.lane == "api"] == []

    async def test_a_lane_used_again_after_going_idle_keeps_its_rules(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._lane(backend, clock, "once", 1, concurrency=1)
        await self._done(backend, await self._claim(backend))
        clock.advance(3600)  # long idle: the store may have forgotten the lane
        for name in ("x", "y", "z"):  # other lanes busy meanwhile
            await self._lane(backend, clock, name, 2)
            await self._done(backend, await self._claim(backend))
        again = await self._lane(backend, clock, "once", 2, concurrency=1)
        (first,) = [lease for lease in await self._claim(backend) if lease.job.lane == "once"]
        assert first.id == again[0].id
        assert [lease.id for lease in await self._claim(backend)] == []
        await self._done(backend, [first])
        assert [lease.id for lease in await self._claim(backend)] == [again[1].id]

    # -- inspection ------------------------------------------------------------------------

    async def test_lanes_lists_use_and_forgets_idle_lanes(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        control = require(backend, FlowControl, "the flow contract")
        await self._lane(backend, clock, "b", 2, concurrency=4)
        await self._lane(backend, clock, "a", 1, weight=3)
        infos = await control.lanes("default")
        assert [(i.lane, i.ready, i.running, i.weight, i.concurrency) for i in infos] == [
            ("a", 1, 0, 3, 0),
            ("b", 2, 0, 1, 4),
        ]
        got = await self._claim(backend)
        assert (await self._info(backend, "b")).running == 2
        await self._done(backend, got)
        await self._claim(backend)  # a claim may forget what is idle; lanes() must not show it
        assert await control.lanes("default") == []
