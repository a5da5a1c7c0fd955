"""The core of the backend contract: the job lifecycle every store must implement alike."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.clock import FakeClock
from conveyor.errors import ClosedError
from conveyor.job import (
    AttemptError,
    Cancelled,
    Completed,
    Failed,
    Job,
    JobState,
    Lease,
    Retrying,
    new_job_id,
)

__all__ = ["CoreContract", "err", "make_job", "stored"]

W = "worker-1"


def make_job(clock: FakeClock, **fields: object) -> Job:
    """A job ready to enqueue, due now unless `run_at`/`delay` say otherwise."""
    delay = float(fields.pop("delay", 0.0))  # type: ignore[arg-type]
    defaults: dict[str, object] = {
        "id": new_job_id(clock.now()),
        "task": "tests.noop",
        "payload": b"{}",
        "queue": "default",
        "run_at": clock.now() + delay,
        "enqueued_at": clock.now(),
        "max_attempts": 3,
    }
    defaults.update(fields)
    return Job(**defaults)  # type: ignore[arg-type]


async def stored(backend: Backend, jobs: Sequence[Job]) -> list[bool]:
    """Enqueue `jobs`; for each, whether it was stored (`False`: a duplicate key's holder
    took its place)."""
    ids = await backend.enqueue(jobs)
    return [got == job.id for got, job in zip(ids, jobs, strict=True)]


def err(attempt: int = 1, message: str = "boom") -> AttemptError:
    return AttemptError(attempt, "ValueError", message, "Traceback...", 0.0)


class CoreContract:
    """The lifecycle tests. Subclasses provide the `backend` fixture."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    async def _enqueue(self, backend: Backend, clock: FakeClock, **fields: object) -> Job:
        job = make_job(clock, **fields)
        assert await stored(backend, [job]) == [True]
        return job

    async def _claim_one(self, backend: Backend, queues: Sequence[str] = ("default",)) -> Lease:
        leases = await backend.claim(ClaimRequest(queues, 1, 30.0, W))
        assert len(leases) == 1
        return leases[0]

    async def _state(self, backend: Backend, job_id: str) -> JobState:
        (job,) = await backend.get([job_id])
        assert job is not None
        return job.state

    # -- enqueue and get -------------------------------------------------------------------

    async def test_enqueue_and_get_round_trip(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(
            backend,
            clock,
            payload=b'{"x":1}',
            priority=5,
            meta={"user": "ann", "n": 3},
            timeout=2.5,
            deadline=clock.now() + 99,
            keep_for=60.0,
        )
        (got,) = await backend.get([job.id])
        assert got is not None
        assert (got.id, got.task, got.payload, got.queue) == (
            job.id,
            job.task,
            b'{"x":1}',
            "default",
        )
        assert (got.priority, got.timeout, got.deadline, got.keep_for) == (
            5,
            2.5,
            job.deadline,
            60.0,
        )
        assert got.meta == {"user": "ann", "n": 3}
        assert got.state is JobState.QUEUED
        assert got.attempts == 0
        assert await backend.get(["nope"]) == [None]

    async def test_future_run_at_is_scheduled(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock, delay=10)
        assert await self._state(backend, job.id) is JobState.SCHEDULED
        assert await backend.claim(ClaimRequest(["default"], 10, 30, W)) == []
        clock.advance(10)
        leases = await backend.claim(ClaimRequest(["default"], 10, 30, W))
        assert [lease.id for lease in leases] == [job.id]

    async def test_promote_moves_only_due_jobs(self, backend: Backend, clock: FakeClock) -> None:
        due = await self._enqueue(backend, clock, delay=5)
        later = await self._enqueue(backend, clock, delay=50)
        clock.advance(6)
        assert await backend.promote() == 1
        assert await self._state(backend, due.id) is JobState.QUEUED
        assert await self._state(backend, later.id) is JobState.SCHEDULED
        assert await backend.promote() == 0

    # -- claim -----------------------------------------------------------------------------

    async def test_claim_order_priority_then_run_at_then_fifo(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await self._enqueue(backend, clock, priority=0)
        b = await self._enqueue(backend, clock, priority=0)
        c = await self._enqueue(backend, clock, priority=9)
        d = await self._enqueue(backend, clock, priority=-3)
        e = await self._enqueue(backend, clock, priority=0, run_at=clock.now() - 100)
        leases = await backend.claim(ClaimRequest(["default"], 10, 30, W))
        assert [lease.id for lease in leases] == [c.id, e.id, a.id, b.id, d.id]

    async def test_claim_takes_queues_in_given_order(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        low = await self._enqueue(backend, clock, queue="low", priority=9)
        high = await self._enqueue(backend, clock, queue="high")
        other = await self._enqueue(backend, clock, queue="other")
        leases = await backend.claim(ClaimRequest(["high", "low"], 10, 30, W))
        assert [lease.id for lease in leases] == [high.id, low.id]
        assert await self._state(backend, other.id) is JobState.QUEUED

    async def test_claim_respects_limit_and_leases(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        for _ in range(5):
            await self._enqueue(backend, clock)
        leases = await backend.claim(ClaimRequest(["default"], 3, 30, W))
        assert len(leases) == 3
        for lease in leases:
            assert lease.job.state is JobState.RUNNING
            assert lease.job.attempts == 1
            assert lease.job.worker == W
            assert lease.expires_at == pytest.approx(clock.now() + 30)
        assert len(await backend.claim(ClaimRequest(["default"], 10, 30, W))) == 2
        assert await backend.claim(ClaimRequest(["default"], 10, 30, W)) == []

    async def test_no_double_claim_under_concurrency(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        jobs = [make_job(clock) for _ in range(200)]
        await backend.enqueue(jobs)
        batches = await asyncio.gather(
            *(backend.claim(ClaimRequest(["default"], 7, 30, f"w{i}")) for i in range(40))
        )
        ids = [lease.id for batch in batches for lease in batch]
        assert len(ids) == len(set(ids)) == 200

    # -- extend and fencing ------------------------------------------------------------------

    async def test_extend_pushes_expiry(self, backend: Backend, clock: FakeClock) -> None:
        await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        clock.advance(20)
        (ext,) = await backend.extend([lease], 30)
        assert ext is not None
        assert ext.token == lease.token
        assert ext.expires_at == pytest.approx(clock.now() + 30)
        clock.advance(25)  # past the original expiry (30), inside the extended one (50)
        assert await backend.rescue() == 0
        clock.advance(10)
        assert await backend.rescue() == 1

    async def test_stale_lease_cannot_settle_or_extend(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        old = await self._claim_one(backend)
        clock.advance(31)
        assert await backend.rescue() == 1
        new = await self._claim_one(backend)
        assert new.id == job.id and new.token != old.token
        assert await backend.settle([(old, Completed(b"stale"))]) == [False]
        assert await backend.extend([old], 30) == [None]
        assert await backend.settle([(new, Completed(b"fresh"))]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None and got.state is JobState.COMPLETED and got.result == b"fresh"
        assert await backend.settle([(new, Completed(b"again"))]) == [False]

    # -- settle ----------------------------------------------------------------------------

    async def test_settle_completed_keeps_result(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        clock.advance(1)
        assert await backend.settle([(lease, Completed(b'"ok"'))]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None
        assert got.state is JobState.COMPLETED
        assert got.result == b'"ok"'
        assert got.finished_at == pytest.approx(clock.now())

    async def test_settle_retrying_schedules_and_records_error(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        e = err(1)
        assert await backend.settle([(lease, Retrying(clock.now() + 5, e))]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None
        assert got.state is JobState.SCHEDULED and got.errors == (e,)
        assert await backend.claim(ClaimRequest(["default"], 1, 30, W)) == []
        clock.advance(5)
        lease2 = await self._claim_one(backend)
        assert lease2.job.attempts == 2 and lease2.job.errors == (e,)

    async def test_settle_retry_now_is_queued(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Retrying(clock.now(), err()))])
        assert await self._state(backend, job.id) is JobState.QUEUED

    async def test_settle_failed_and_cancelled(self, backend: Backend, clock: FakeClock) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        la, lb = await backend.claim(ClaimRequest(["default"], 2, 30, W))
        e = err(1, "poison")
        assert await backend.settle([(la, Failed(e)), (lb, Cancelled("user said so"))]) == [
            True,
            True,
        ]
        got_a, got_b = await backend.get([a.id, b.id])
        assert got_a is not None and got_a.state is JobState.FAILED and got_a.errors == (e,)
        assert got_b is not None and got_b.state is JobState.CANCELLED

    async def test_settle_batch_mixes_stale_and_valid(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await self._enqueue(backend, clock)
        await self._enqueue(backend, clock)
        la, lb = await backend.claim(ClaimRequest(["default"], 2, 30, W))
        forged = Lease(lb.job, lb.token + 1000, lb.expires_at)
        assert await backend.settle([(la, Completed(None)), (forged, Completed(None))]) == [
            True,
            False,
        ]
        assert await self._state(backend, lb.id) is JobState.RUNNING

    # -- rescue ----------------------------------------------------------------------------

    async def test_rescue_requeues_expired_leases_only(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        (la,) = await backend.claim(ClaimRequest(["default"], 1, 10, W))
        (lb,) = await backend.claim(ClaimRequest(["default"], 1, 100, W))
        clock.advance(11)
        assert await backend.rescue() == 1
        assert await backend.rescue() == 0  # a second sweep finds nothing to do
        got_a, got_b = await backend.get([a.id, b.id])
        assert got_a is not None and got_a.state is JobState.QUEUED
        assert got_a.errors and got_a.errors[-1].type == "LeaseExpired"
        assert got_b is not None and got_b.state is JobState.RUNNING
        assert la.id == a.id and lb.id == b.id

    async def test_rescue_fails_job_with_no_attempts_left(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock, max_attempts=1)
        await self._claim_one(backend)
        clock.advance(31)
        assert await backend.rescue() == 1
        (got,) = await backend.get([job.id])
        assert got is not None and got.state is JobState.FAILED
        assert got.errors[-1].type == "LeaseExpired"

    async def test_racing_rescues_requeue_once(self, backend: Backend, clock: FakeClock) -> None:
        for _ in range(20):
            await self._enqueue(backend, clock)
        await backend.claim(ClaimRequest(["default"], 20, 5, W))
        clock.advance(6)
        results = await asyncio.gather(*(backend.rescue() for _ in range(5)))
        assert sum(results) == 20
        assert len(await backend.claim(ClaimRequest(["default"], 100, 5, W))) == 20

    # -- unique keys -----------------------------------------------------------------------

    async def test_duplicate_key_skipped_while_live_and_retained(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        first = await self._enqueue(backend, clock, key="order-7")
        dup = make_job(clock, key="order-7")
        assert await stored(backend, [dup]) == [False]
        assert await backend.get([dup.id]) == [None]
        lease = await self._claim_one(backend)
        assert await stored(backend, [make_job(clock, key="order-7")]) == [False]
        await backend.settle([(lease, Completed(None))])
        # Completed and retained, no window given: the key stays held.
        assert await stored(backend, [make_job(clock, key="order-7")]) == [False]
        page = await backend.query(JobFilter(key="order-7"))
        assert [j.id for j in page.jobs] == [first.id]

    async def test_key_window_ends(self, backend: Backend, clock: FakeClock) -> None:
        await self._enqueue(backend, clock, key="k", unique_until=clock.now() + 60)
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Completed(None))])
        assert await stored(backend, [make_job(clock, key="k")]) == [False]
        clock.advance(61)
        assert await stored(backend, [make_job(clock, key="k")]) == [True]

    async def test_duplicate_keys_in_one_batch(self, backend: Backend, clock: FakeClock) -> None:
        jobs = [make_job(clock, key="same"), make_job(clock, key="same"), make_job(clock)]
        assert await stored(backend, jobs) == [True, False, True]

    async def test_a_duplicate_names_the_job_holding_its_key(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        first = await self._enqueue(backend, clock, key="order-9")
        again, other = make_job(clock, key="order-9"), make_job(clock)
        assert await backend.enqueue([again, other]) == [first.id, other.id]
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Completed(None))])  # retained: still holds the key
        assert await backend.enqueue([make_job(clock, key="order-9")]) == [first.id]

    async def test_cancelled_and_purged_jobs_release_keys(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock, key="k1")
        assert await backend.cancel(job.id) is JobState.CANCELLED
        assert await stored(backend, [make_job(clock, key="k1")]) == [True]
        done = await self._enqueue(backend, clock, key="k2", keep_for=10, queue="q2")
        lease = await self._claim_one(backend, ["q2"])
        assert lease.id == done.id
        await backend.settle([(lease, Completed(None))])
        clock.advance(11)
        assert await backend.purge([JobState.COMPLETED]) >= 1
        assert await stored(backend, [make_job(clock, key="k2")]) == [True]

    async def test_a_keyed_job_enqueued_again_keeps_its_record(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        # Periodic fires rely on it: every scheduler sends a fire with the same id and key,
        # and one cancelled by an operator must stay cancelled (its key is released).
        job = await self._enqueue(backend, clock, key="sched:x:1", delay=60)
        assert await backend.enqueue([job]) == [job.id]
        assert await backend.cancel(job.id) is JobState.CANCELLED
        assert await backend.enqueue([job]) == [job.id]
        (again,) = await backend.get([job.id])
        assert again is not None and again.state is JobState.CANCELLED
        page = await backend.query(JobFilter(key="sched:x:1"))
        assert [j.id for j in page.jobs] == [job.id]

    # -- cancel and requeue ------------------------------------------------------------------

    async def test_cancel_states(self, backend: Backend, clock: FakeClock) -> None:
        queued = await self._enqueue(backend, clock)
        scheduled = await self._enqueue(backend, clock, delay=100)
        assert await backend.cancel(queued.id, "no longer needed") is JobState.CANCELLED
        assert await backend.cancel(scheduled.id) is JobState.CANCELLED
        assert await backend.cancel("missing") is None
        assert await backend.claim(ClaimRequest(["default"], 10, 30, W)) == []
        clock.advance(200)
        assert await backend.claim(ClaimRequest(["default"], 10, 30, W)) == []

    async def test_cancel_running_is_seen_at_heartbeat(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert await backend.cancel(job.id) is JobState.RUNNING
        assert await backend.extend([lease], 30) == [None]
        assert await self._state(backend, job.id) is JobState.CANCELLED
        assert await backend.settle([(lease, Completed(None))]) == [False]

    async def test_cancel_finished_job_changes_nothing(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Completed(b"1"))])
        assert await backend.cancel(job.id) is JobState.COMPLETED

    async def test_requeue_failed_keeps_history(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock, payload=b'{"a":1}')
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Failed(err(1, "bad")))])
        assert await backend.requeue(job.id) is True
        (got,) = await backend.get([job.id])
        assert got is not None
        assert got.state is JobState.QUEUED and got.payload == b'{"a":1}'
        assert [e.message for e in got.errors] == ["bad"]
        again = await self._claim_one(backend)
        assert again.id == job.id and again.job.attempts == 1
        assert await backend.requeue(job.id) is False  # running now
        assert await backend.requeue("missing") is False

    # -- inspection ------------------------------------------------------------------------

    async def test_counts(self, backend: Backend, clock: FakeClock) -> None:
        for _ in range(3):
            await self._enqueue(backend, clock)
        await self._enqueue(backend, clock, queue="low", delay=60)
        await self._claim_one(backend)
        counts = await backend.counts()
        assert counts["default"][JobState.QUEUED] == 2
        assert counts["default"][JobState.RUNNING] == 1
        assert counts["low"][JobState.SCHEDULED] == 1
        only_low = await backend.counts("low")
        assert set(only_low) == {"low"}

    async def test_query_filters_and_pages(self, backend: Backend, clock: FakeClock) -> None:
        ids = [(await self._enqueue(backend, clock, task="t.a")).id for _ in range(7)]
        await self._enqueue(backend, clock, task="t.b")
        seen: list[str] = []
        after: str | None = None
        while True:
            page = await backend.query(JobFilter(task="t.a"), after=after, limit=3)
            seen += [j.id for j in page.jobs]
            if page.next is None:
                break
            after = page.next
        assert seen == ids
        queued = await backend.query(JobFilter(state=JobState.QUEUED, queue="default"), limit=100)
        assert len(queued.jobs) == 8
        assert (await backend.query(JobFilter(state=JobState.FAILED))).jobs == []

    async def test_purge_respects_retention_and_live_jobs(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        done = await self._enqueue(backend, clock, keep_for=100)
        live = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert lease.id == done.id
        await backend.settle([(lease, Completed(None))])
        assert await backend.purge([JobState.COMPLETED]) == 0
        clock.advance(101)
        assert await backend.purge([JobState.QUEUED, JobState.COMPLETED]) == 1
        assert await backend.get([done.id, live.id]) == [None, (await backend.get([live.id]))[0]]
        assert await self._state(backend, live.id) is JobState.QUEUED

    async def test_purge_before(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock, keep_for=10_000)
        lease = await self._claim_one(backend)
        await backend.settle([(lease, Failed(err()))])
        clock.advance(5)
        assert await backend.purge([JobState.FAILED], before=clock.now() - 10) == 0
        assert await backend.purge([JobState.FAILED], before=clock.now()) == 1
        assert await backend.get([job.id]) == [None]

    async def test_query_by_lane_pages_with_a_cursor(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        acme = [make_job(clock, lane="acme") for _ in range(3)]
        other = [make_job(clock, lane="globex"), make_job(clock)]
        await backend.enqueue([acme[0], other[0], acme[1], other[1], acme[2]])
        seen: list[str] = []
        after: str | None = None
        while True:
            page = await backend.query(JobFilter(lane="acme"), after, 1)
            seen += [j.id for j in page.jobs]
            if page.next is None:
                break
            after = page.next
        assert seen == [j.id for j in acme]
        lease = await self._claim_one(backend)
        running = await backend.query(JobFilter(state=JobState.RUNNING, lane=lease.job.lane))
        assert [j.id for j in running.jobs] == [lease.id]
        assert (await backend.query(JobFilter(queue="other", lane="acme"))).jobs == []

    async def test_delete_takes_ended_jobs_only(self, backend: Backend, clock: FakeClock) -> None:
        done = await self._enqueue(backend, clock, key="k-1", unique_until=clock.now() + 3600)
        dead = await self._enqueue(backend, clock)
        for outcome in (Completed(None), Failed(err())):
            lease = await self._claim_one(backend)
            await backend.settle([(lease, outcome)])
        queued = await self._enqueue(backend, clock)
        later = await self._enqueue(backend, clock, delay=60)
        running = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert lease.id == queued.id
        ids = [done.id, dead.id, queued.id, later.id, running.id, "nope"]
        assert await backend.delete(ids) == [True, True, False, False, False, False]
        assert await backend.delete([]) == []
        got = await backend.get(ids)
        assert got[:2] == [None, None] and all(j is not None for j in got[2:5])
        counts = (await backend.counts()).get("default", {})
        assert counts.get(JobState.COMPLETED, 0) == counts.get(JobState.FAILED, 0) == 0
        page = await backend.query(JobFilter(state=JobState.FAILED))
        assert page.jobs == []
        again = make_job(clock, key="k-1", unique_until=clock.now() + 3600)
        assert await stored(backend, [again]) == [True]  # the deleted job's key is free

    # -- wait and close --------------------------------------------------------------------

    async def test_wait_wakes_on_enqueue(self, backend: Backend, clock: FakeClock) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            await backend.enqueue([make_job(clock)])

        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(later())
            await backend.wait(["default"], timeout=5.0)
        assert loop.time() - start < 2.0
        assert len(await backend.claim(ClaimRequest(["default"], 1, 30, W))) == 1

    async def test_wait_for_lease_wakes_on_enqueue_and_any_lease_is_live(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        """Either the job is handed over (running, leased to the waiter, settleable) or
        nothing is and a claim finds it: never both, never neither."""
        job = make_job(clock)

        async def later() -> None:
            await asyncio.sleep(0.05)
            await backend.enqueue([job])

        async with asyncio.TaskGroup() as tg:
            tg.create_task(later())
            async with asyncio.timeout(2.0):
                handed = await backend.wait_for_lease(["default"], 5.0, W, 30)
        claimed = await backend.claim(ClaimRequest(["default"], 10, 30, W))
        (lease,) = [*handed, *claimed]
        assert lease.id == job.id and lease.job.state is JobState.RUNNING
        assert lease.job.attempts == 1
        assert await backend.settle([(lease, Completed(None))]) == [True]

    async def test_release_gives_back_an_unstarted_job_without_using_an_attempt(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = make_job(clock, max_attempts=1)
        await backend.enqueue([job])
        (lease,) = await backend.claim(ClaimRequest(["default"], 1, 30, W))
        assert await backend.release([lease]) == [True]
        assert await backend.release([lease]) == [False]  # stale now: no change
        (back,) = await backend.get([job.id])
        assert back is not None and back.state is JobState.QUEUED
        assert back.attempts == 0 and back.worker is None and not back.errors
        (again,) = await backend.claim(ClaimRequest(["default"], 1, 30, W))
        assert again.id == job.id and again.job.attempts == 1 and again.token > lease.token
        assert await backend.settle([(lease, Completed(None))]) == [False]  # fenced
        assert await backend.settle([(again, Completed(None))]) == [True]

    async def test_release_of_a_job_with_a_cancel_requested_cancels_it(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = make_job(clock)
        await backend.enqueue([job])
        (lease,) = await backend.claim(ClaimRequest(["default"], 1, 30, W))
        assert await backend.cancel(job.id) is JobState.RUNNING
        assert await backend.release([lease]) == [True]
        (gone,) = await backend.get([job.id])
        assert gone is not None and gone.state is JobState.CANCELLED
        assert await backend.claim(ClaimRequest(["default"], 1, 30, W)) == []

    async def test_wait_times_out(self, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await backend.wait(["default"], timeout=0.05)
        assert 0.03 <= loop.time() - start < 2.0

    async def test_use_after_close_raises(self, backend: Backend, clock: FakeClock) -> None:
        await backend.aclose()
        await backend.aclose()  # idempotent
        with pytest.raises(ClosedError):
            await backend.enqueue([make_job(clock)])
