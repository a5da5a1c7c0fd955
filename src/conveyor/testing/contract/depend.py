"""The dependency contract: jobs that wait for parent jobs (chains, groups, chords, DAGs).

A job with `parents` is `waiting` until each parent has ended; the settle (or rescue, or
cancel) that ends its last parent makes it ready in the same atomic step. A parent that
fails or is cancelled cancels its waiting descendants, unless a child says
``on_parent_failure="run"``. See `Backend.enqueue`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.clock import FakeClock
from conveyor.errors import DependencyError, InvalidOption
from conveyor.job import Cancelled, Completed, Failed, Job, JobState, Lease, Retrying
from conveyor.testing.contract.core import CoreContract, err, make_job, stored

__all__ = ["DependContract"]

W = "worker-1"


class DependContract(CoreContract):
    """Waiting jobs and what their parents' ends do to them. Subclasses provide `backend`."""

    async def _jobs(self, backend: Backend, ids: Sequence[str]) -> list[Job]:
        got = await backend.get(ids)
        assert all(j is not None for j in got)
        return [j for j in got if j is not None]

    async def _claim_all(self, backend: Backend, queue: str = "default") -> list[Lease]:
        return await backend.claim(ClaimRequest([queue], 1000, 30.0, W))

    async def _run(self, backend: Backend, queue: str = "default") -> list[str]:
        """Claim and complete everything ready in `queue`; the ids, in claim order."""
        leases = await self._claim_all(backend, queue)
        assert await backend.settle([(lease, Completed(b"1")) for lease in leases]) == [True] * len(
            leases
        )
        return [lease.id for lease in leases]

    async def _states(self, backend: Backend, *jobs: Job) -> list[JobState]:
        return [j.state for j in await self._jobs(backend, [job.id for job in jobs])]

    # -- waiting and release ---------------------------------------------------------------

    async def test_a_child_waits_until_its_parent_completes(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(parent.id,))
        (got,) = await self._jobs(backend, [child.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1
        assert got.parents == (parent.id,)
        counts = await backend.counts("default")
        assert counts["default"].get(JobState.WAITING) == 1
        page = await backend.query(JobFilter(state=JobState.WAITING))
        assert [j.id for j in page.jobs] == [child.id]
        # Only the parent is claimable; completing it makes the child ready in that step.
        assert await self._run(backend) == [parent.id]
        (got,) = await self._jobs(backend, [child.id])
        assert got.state is JobState.QUEUED and got.waiting_for == 0
        assert await self._run(backend) == [child.id]

    async def test_a_child_of_several_parents_waits_for_the_last(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(a.id, b.id))
        first = await self._claim_one(backend)
        assert first.id == a.id
        assert await backend.settle([(first, Completed(None))]) == [True]
        (got,) = await self._jobs(backend, [child.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1
        assert await self._run(backend) == [b.id]
        assert await self._states(backend, child) == [JobState.QUEUED]

    async def test_a_retry_of_a_parent_is_not_its_end(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(parent.id,))
        lease = await self._claim_one(backend)
        assert await backend.settle([(lease, Retrying(clock.now(), err()))]) == [True]
        assert await self._states(backend, child) == [JobState.WAITING]
        clock.advance(31)
        lease = await self._claim_one(backend)
        assert await backend.rescue() == 0
        assert await backend.settle([(lease, Completed(None))]) == [True]
        assert await self._states(backend, child) == [JobState.QUEUED]

    async def test_a_due_child_with_a_delay_is_scheduled_when_released(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(parent.id,), delay=60)
        assert await self._run(backend) == [parent.id]
        assert await self._states(backend, child) == [JobState.SCHEDULED]
        clock.advance(61)
        assert await self._run(backend) == [child.id]

    async def test_a_chain_in_one_call(self, backend: Backend, clock: FakeClock) -> None:
        a = make_job(clock)
        b = make_job(clock, parents=(a.id,), feed="one")
        c = make_job(clock, parents=(b.id,), feed="one")
        assert await stored(backend, [a, b, c]) == [True, True, True]
        assert await self._states(backend, a, b, c) == [
            JobState.QUEUED, JobState.WAITING, JobState.WAITING,
        ]  # fmt: skip
        (got,) = await self._jobs(backend, [c.id])
        assert got.feed == "one"
        for job in (a, b, c):
            assert await self._run(backend) == [job.id]
        assert await self._claim_all(backend) == []

    async def test_a_chord_of_many_members_releases_its_callback_once(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        members = [make_job(clock) for _ in range(1200)]
        callback = make_job(clock, parents=tuple(m.id for m in members), feed="all")
        assert all(await stored(backend, [*members, callback]))
        (got,) = await self._jobs(backend, [callback.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1200
        assert got.parents == tuple(m.id for m in members)
        leases = await backend.claim(ClaimRequest(["default"], 1000, 30.0, W))
        assert callback.id not in {lease.id for lease in leases}
        assert all(await backend.settle([(lease, Completed(None)) for lease in leases]))
        (got,) = await self._jobs(backend, [callback.id])
        assert got.state is JobState.WAITING and got.waiting_for == 200
        rest = await self._run(backend)
        assert len(rest) == 200 and callback.id not in rest
        assert await self._run(backend) == [callback.id]

    async def test_parents_already_ended_count_at_enqueue(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        done = await self._enqueue(backend, clock)
        assert await self._run(backend) == [done.id]
        failed = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert await backend.settle([(lease, Failed(err()))]) == [True]
        ready = await self._enqueue(backend, clock, parents=(done.id,))
        anyway = await self._enqueue(
            backend, clock, parents=(done.id, failed.id), on_parent_failure="run"
        )
        doomed = await self._enqueue(backend, clock, parents=(done.id, failed.id))
        assert await self._states(backend, ready, anyway, doomed) == [
            JobState.QUEUED, JobState.QUEUED, JobState.CANCELLED,
        ]  # fmt: skip
        (got,) = await self._jobs(backend, [doomed.id])
        assert got.meta.get("cancel_reason") == f"parent {failed.id} failed"

    # -- failure policy --------------------------------------------------------------------

    async def test_a_failed_parent_cancels_its_waiting_descendants(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = make_job(clock)
        b = make_job(clock, parents=(a.id,))
        c = make_job(clock, parents=(b.id,))
        runs = make_job(clock, parents=(b.id,), on_parent_failure="run")
        other = make_job(clock)
        assert all(await stored(backend, [a, other, b, c, runs]))
        leases = await self._claim_all(backend)
        by_id = {lease.id: lease for lease in leases}
        assert set(by_id) == {a.id, other.id}
        assert await backend.settle([(by_id[a.id], Failed(err()))]) == [True]
        got = {j.id: j for j in await self._jobs(backend, [b.id, c.id, runs.id])}
        assert got[b.id].state is JobState.CANCELLED
        assert got[b.id].meta.get("cancel_reason") == f"parent {a.id} failed"
        assert got[c.id].state is JobState.CANCELLED
        assert got[c.id].meta.get("cancel_reason") == f"parent {b.id} cancelled"
        assert got[runs.id].state is JobState.QUEUED  # its policy: run anyway
        assert await backend.settle([(by_id[other.id], Completed(None))]) == [True]

    async def test_a_child_that_runs_anyway(self, backend: Backend, clock: FakeClock) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(a.id, b.id), on_parent_failure="run")
        leases = {lease.id: lease for lease in await self._claim_all(backend)}
        assert await backend.settle([(leases[a.id], Cancelled("stop"))]) == [True]
        assert await self._states(backend, child) == [JobState.WAITING]
        assert await backend.settle([(leases[b.id], Completed(None))]) == [True]
        assert await self._states(backend, child) == [JobState.QUEUED]

    async def test_cancelling_a_queued_parent_or_a_waiting_child(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock, parents=(a.id,))
        c = await self._enqueue(backend, clock, parents=(b.id,))
        assert await backend.cancel(b.id, "not needed") is JobState.CANCELLED
        assert await self._states(backend, a, b, c) == [
            JobState.QUEUED, JobState.CANCELLED, JobState.CANCELLED,
        ]  # fmt: skip
        d = await self._enqueue(backend, clock, parents=(a.id,))
        assert await backend.cancel(a.id) is JobState.CANCELLED
        assert await self._states(backend, d) == [JobState.CANCELLED]
        assert await self._claim_all(backend) == []

    async def test_a_parent_rescued_out_of_attempts_cancels_its_child(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = await self._enqueue(backend, clock, max_attempts=1)
        child = await self._enqueue(backend, clock, parents=(parent.id,))
        await self._claim_one(backend)
        clock.advance(31)
        assert await backend.rescue() == 1
        assert await self._states(backend, parent, child) == [
            JobState.FAILED, JobState.CANCELLED,
        ]  # fmt: skip

    async def test_a_cancel_seen_at_heartbeat_cancels_the_child(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(parent.id,))
        lease = await self._claim_one(backend)
        assert await backend.cancel(parent.id) is JobState.RUNNING
        assert await backend.extend([lease], 30.0) == [None]
        assert await self._states(backend, child) == [JobState.CANCELLED]

    async def test_a_parent_that_ends_again_counts_once(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(a.id, b.id), on_parent_failure="run")
        leases = {lease.id: lease for lease in await self._claim_all(backend)}
        assert await backend.settle([(leases[a.id], Failed(err()))]) == [True]
        assert await backend.requeue(a.id)
        assert await self._run(backend) == [a.id]
        (got,) = await self._jobs(backend, [child.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1
        assert await backend.settle([(leases[b.id], Completed(None))]) == [True]
        assert await self._states(backend, child) == [JobState.QUEUED]

    async def test_a_waiting_job_holds_its_key(self, backend: Backend, clock: FakeClock) -> None:
        parent = await self._enqueue(backend, clock)
        child = await self._enqueue(backend, clock, parents=(parent.id,), key="k")
        again = make_job(clock, key="k")
        assert await backend.enqueue([again]) == [child.id]

    async def test_a_parent_skipped_as_a_duplicate_stands_for_its_holder(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        holder = await self._enqueue(backend, clock, key="step-1")
        dup = make_job(clock, key="step-1")
        child = make_job(clock, parents=(dup.id,))
        assert await backend.enqueue([dup, child]) == [holder.id, child.id]
        (got,) = await self._jobs(backend, [child.id])
        assert got.parents == (holder.id,) and got.state is JobState.WAITING
        assert await self._run(backend) == [holder.id]
        assert await self._states(backend, child) == [JobState.QUEUED]

    # -- bad graphs ------------------------------------------------------------------------

    async def _nothing_stored(self, backend: Backend, jobs: Sequence[Job]) -> None:
        assert await backend.get([j.id for j in jobs]) == [None] * len(jobs)

    async def test_an_unknown_or_purged_parent_writes_nothing(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        ok = make_job(clock)
        orphan = make_job(clock, parents=("0" * 32,))
        with pytest.raises(DependencyError, match=r"0{32}.*unknown, or already purged"):
            await backend.enqueue([ok, orphan])
        await self._nothing_stored(backend, [ok, orphan])
        gone = await self._enqueue(backend, clock, keep_for=0.0)
        assert await self._run(backend) == [gone.id]
        assert await backend.purge([JobState.COMPLETED]) == 1
        late = make_job(clock, parents=(gone.id,))
        with pytest.raises(DependencyError, match=gone.id):
            await backend.enqueue([late])
        await self._nothing_stored(backend, [late])

    async def test_a_cycle_writes_nothing(self, backend: Backend, clock: FakeClock) -> None:
        a = make_job(clock)
        b = make_job(clock, parents=(a.id,))
        a = make_job(clock, id=a.id, parents=(b.id,))
        with pytest.raises(DependencyError, match="cycle"):
            await backend.enqueue([a, b])
        await self._nothing_stored(backend, [a, b])
        selfish = make_job(clock)
        selfish = make_job(clock, id=selfish.id, parents=(selfish.id,))
        with pytest.raises(DependencyError, match="itself"):
            await backend.enqueue([selfish])
        await self._nothing_stored(backend, [selfish])

    async def test_bad_policies_and_feeds_write_nothing(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        parent = make_job(clock)
        for bad in (
            {"on_parent_failure": "ignore"},
            {"feed": "some"},
        ):
            child = make_job(clock, parents=(parent.id,), **bad)
            with pytest.raises(InvalidOption):
                await backend.enqueue([parent, child])
            await self._nothing_stored(backend, [parent, child])
        twice = make_job(clock, parents=(parent.id, parent.id))
        with pytest.raises(DependencyError, match="twice"):
            await backend.enqueue([parent, twice])
        await self._nothing_stored(backend, [parent, twice])

    async def test_cross_queue_parents_where_the_store_keeps_queues_apart(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        a = make_job(clock, queue="one")
        b = make_job(clock, queue="two", parents=(a.id,))
        if backend.cross_queue_dependencies:
            assert all(await stored(backend, [a, b]))
            assert await self._run(backend, "one") == [a.id]
            assert await self._run(backend, "two") == [b.id]
            return
        with pytest.raises(DependencyError, match="share a queue"):
            await backend.enqueue([a, b])
        await self._nothing_stored(backend, [a, b])

    # -- holds and link (a batch gathering members for its callbacks) -----------------------

    async def test_a_job_enqueued_with_holds_waits_for_them(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        held = await self._enqueue(backend, clock, waiting_for=2)
        parent = await self._enqueue(backend, clock)
        both = await self._enqueue(backend, clock, waiting_for=1, parents=(parent.id,))
        (got,) = await self._jobs(backend, [held.id])
        assert got.state is JobState.WAITING and got.waiting_for == 2
        (got,) = await self._jobs(backend, [both.id])
        assert got.state is JobState.WAITING and got.waiting_for == 2
        assert await self._run(backend) == [parent.id]
        (got,) = await self._jobs(backend, [both.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1  # the hold is left
        assert await backend.link(held.id, holds=-1)
        (got,) = await self._jobs(backend, [held.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1
        assert await backend.link(held.id, holds=-1)
        assert await backend.link(both.id, holds=-1)
        assert sorted(await self._run(backend)) == sorted([held.id, both.id])

    async def test_link_adds_parents_to_a_waiting_job(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        held = await self._enqueue(backend, clock, waiting_for=1)
        a = await self._enqueue(backend, clock)
        b = await self._enqueue(backend, clock)
        assert await backend.link(held.id, [a.id, b.id, a.id], holds=-1)
        (got,) = await self._jobs(backend, [held.id])
        assert got.state is JobState.WAITING and got.waiting_for == 2
        assert got.parents == (a.id, b.id)
        assert await backend.link(held.id, [a.id])  # a parent already: nothing changes
        (got,) = await self._jobs(backend, [held.id])
        assert got.waiting_for == 2 and got.parents == (a.id, b.id)
        first = await self._claim_one(backend)
        assert await backend.settle([(first, Completed(None))]) == [True]
        assert await self._states(backend, held) == [JobState.WAITING]
        assert sorted(await self._run(backend)) == [b.id]
        assert await self._run(backend) == [held.id]

    async def test_link_counts_parents_that_already_ended(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        done = await self._enqueue(backend, clock)
        assert await self._run(backend) == [done.id]
        failed = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert await backend.settle([(lease, Failed(err()))]) == [True]
        held = await self._enqueue(backend, clock, waiting_for=1)
        anyway = await self._enqueue(backend, clock, waiting_for=1, on_parent_failure="run")
        assert await backend.link(held.id, [done.id])
        (got,) = await self._jobs(backend, [held.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1
        assert await backend.link(anyway.id, [done.id, failed.id], holds=-1)
        assert await self._states(backend, anyway) == [JobState.QUEUED]
        child = await self._enqueue(backend, clock, parents=(held.id,))
        assert await backend.link(held.id, [failed.id])
        cancelled, below = await self._jobs(backend, [held.id, child.id])
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.meta.get("cancel_reason") == f"parent {failed.id} failed"
        assert below.state is JobState.CANCELLED  # the cascade

    async def test_link_changes_nothing_on_a_job_that_no_longer_waits(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        ready = await self._enqueue(backend, clock)
        parent = await self._enqueue(backend, clock)
        assert not await backend.link(ready.id, [parent.id])
        assert not await backend.link(ready.id, holds=1)
        assert not await backend.link("f" * 32, holds=-1)
        (got,) = await self._jobs(backend, [ready.id])
        assert got.state is JobState.QUEUED and got.parents == () and got.waiting_for == 0
        assert await self._run(backend) == [ready.id, parent.id]

    async def test_bad_links_change_nothing(self, backend: Backend, clock: FakeClock) -> None:
        held = await self._enqueue(backend, clock, waiting_for=1)
        below = await self._enqueue(backend, clock, parents=(held.id,))
        deeper = await self._enqueue(backend, clock, parents=(below.id,))
        with pytest.raises(DependencyError, match="unknown, or already purged"):
            await backend.link(held.id, ["0" * 32], holds=-1)
        with pytest.raises(DependencyError, match="cycle"):
            await backend.link(held.id, [deeper.id], holds=-1)
        with pytest.raises(DependencyError, match="itself"):
            await backend.link(held.id, [held.id])
        with pytest.raises(InvalidOption, match="holds"):
            await backend.link(held.id, holds=True)
        with pytest.raises(InvalidOption, match="holds"):
            await backend.enqueue([make_job(clock, waiting_for=-1)])
        (got,) = await self._jobs(backend, [held.id])
        assert got.state is JobState.WAITING and got.waiting_for == 1 and got.parents == ()
        assert await backend.link(held.id, holds=-1)
        assert await self._run(backend) == [held.id]
