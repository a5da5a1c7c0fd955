"""The job state machine, property-tested: random operation sequences run against the memory
backend (the reference) and SQLite side by side must give the same answers, and the
invariants (no double claim, fencing, one state per job) must hold after every step."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.job import (
    AttemptError,
    Cancelled,
    Completed,
    Failed,
    Job,
    JobState,
    Lease,
    Outcome,
    Retrying,
)

QUEUES = ("a", "b")


class SameAnswers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock(start=1_000_000.0)
        self.backends: list[Backend] = [
            MemoryBackend(clock=self.clock),
            SQLiteBackend(Path(self.tmp.name) / "jobs.db", clock=self.clock),
        ]
        self.ids: list[str] = []
        self.leases: list[Lease] = []  # every lease ever handed out, stale ones included
        self.n = 0

    def teardown(self) -> None:
        for b in self.backends:
            self.loop.run_until_complete(b.aclose())
        self.loop.close()
        self.tmp.cleanup()

    def both(self, op: str, *args: object) -> object:
        """Run `op` on every backend; the answers must agree. Returns the reference's."""
        answers = [self.loop.run_until_complete(getattr(b, op)(*args)) for b in self.backends]
        assert answers[0] == answers[1], (op, args, answers)
        return answers[0]

    @rule(
        count=st.integers(1, 3),
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-1, 1),
        delay=st.sampled_from([0.0, 0.0, 5.0]),
        key=st.sampled_from([None, None, "k1", "k2"]),
        window=st.sampled_from([None, 3.0]),
    )
    def enqueue(
        self,
        count: int,
        queue: str,
        priority: int,
        delay: float,
        key: str | None,
        window: float | None,
    ) -> None:
        now = self.clock.now()
        jobs = []
        for _ in range(count):
            self.n += 1
            jobs.append(
                Job(
                    id=f"job{self.n:05d}",
                    task="t",
                    payload=b"{}",
                    queue=queue,
                    priority=priority,
                    run_at=now + delay,
                    enqueued_at=now,
                    max_attempts=2,
                    key=key,
                    unique_until=(now + window) if key and window else None,
                    keep_for=10.0,
                )
            )
        stored = self.both("enqueue", jobs)
        assert isinstance(stored, list)
        self.ids += [j.id for j, ok in zip(jobs, stored, strict=True) if ok]

    @rule(
        order=st.permutations(QUEUES),
        first_only=st.booleans(),
        limit=st.integers(1, 3),
        lease_for=st.sampled_from([5.0, 10.0]),
    )
    def claim(self, order: list[str], first_only: bool, limit: int, lease_for: float) -> None:
        queues = order[:1] if first_only else order
        answers = [
            self.loop.run_until_complete(b.claim(ClaimRequest(queues, limit, lease_for, "w")))
            for b in self.backends
        ]
        ids = [[(lease.id, lease.token, lease.job.attempts) for lease in a] for a in answers]
        assert ids[0] == ids[1], ids
        self.leases += answers[0]

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), kind=st.sampled_from(["done", "retry", "later", "fail", "cancel"]))
    def settle(self, data: st.DataObject, kind: str) -> None:
        lease = data.draw(st.sampled_from(self.leases))
        now = self.clock.now()
        err = AttemptError(lease.job.attempts, "E", "boom", "", now)
        outcome: Outcome = {
            "done": Completed(b"1"),
            "retry": Retrying(now, err),
            "later": Retrying(now + 4, err),
            "fail": Failed(err),
            "cancel": Cancelled("stop"),
        }[kind]
        self.both("settle", [(lease, outcome)])

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.leases))
        answers = [self.loop.run_until_complete(b.extend([lease], 5.0)) for b in self.backends]
        got = [[(x.token, x.expires_at) if x else None for x in a] for a in answers]
        assert got[0] == got[1], got

    @rule(seconds=st.sampled_from([1.0, 3.0, 6.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def rescue(self) -> None:
        self.both("rescue")

    @rule()
    def promote(self) -> None:
        self.both("promote")

    @rule()
    def purge(self) -> None:
        self.both("purge", [JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED])

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.both("cancel", data.draw(st.sampled_from(self.ids)), "why")

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        self.both("requeue", data.draw(st.sampled_from(self.ids)))

    @invariant()
    def same_jobs_and_consistent(self) -> None:
        views = []
        for b in self.backends:
            jobs = self.loop.run_until_complete(b.get(self.ids))
            views.append(
                [
                    None
                    if j is None
                    else (
                        j.state,
                        j.attempts,
                        j.run_at,
                        j.cancel_requested,
                        tuple(e.type for e in j.errors),
                        j.result,
                    )
                    for j in jobs
                ]
            )
        assert views[0] == views[1]
        counts = [self.loop.run_until_complete(b.counts()) for b in self.backends]
        assert counts[0] == counts[1]
        queued = [
            self.loop.run_until_complete(b.query(JobFilter(state=JobState.QUEUED), limit=1000))
            for b in self.backends
        ]
        assert [j.id for j in queued[0].jobs] == [j.id for j in queued[1].jobs]

    @invariant()
    def no_double_claim(self) -> None:
        # However leases were handed out, at most one per job holds the current token.
        current: dict[str, int] = {}
        for lease in self.leases:
            current[lease.id] = max(current.get(lease.id, 0), lease.token)
        tokens = {(lease.id, lease.token) for lease in self.leases}
        assert len(tokens) == len(self.leases)  # a token is never handed out twice
        assert all(t >= 1 for t in current.values())


SameAnswers.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSameAnswers = SameAnswers.TestCase
