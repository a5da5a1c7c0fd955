"""The job state machine, property-tested: random operation sequences run against the memory
backend (the reference), SQLite and a real Redis side by side must give the same answers, the
same jobs, counts and query pages, and the invariants (no double claim, fencing, one state per
job, Redis indexes exact) must hold after every step.

Without a redis-server binary the Redis column is left out locally (and the run fails under
``CI=true``, like every Redis test).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.redis import RedisBackend
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
from conveyor.testing.redis_server import RedisServer
from tests.redis.indexes import index_problems

# A pass takes about 10 s; a failure shrinks for up to Hypothesis's own limit (300 s), and
# its report (the shortest failing sequence) must not be cut off by the default timeout.
pytestmark = pytest.mark.timeout(400)

QUEUES = ("a", "b")
REDIS: str | None = None  # the session server's URL (see `redis_url`), or None without one
_PREFIXES = itertools.count()


@pytest.fixture(autouse=True)
def redis_url(request: pytest.FixtureRequest) -> Iterator[None]:
    """Point the state machine at the session's redis-server, when there is one."""
    global REDIS
    if RedisServer.available() or os.environ.get("CI") == "true":
        REDIS = request.getfixturevalue("redis_server").url
    yield
    REDIS = None


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
        self.redis: redis.Redis | None = None
        if REDIS is not None:  # a fresh prefix per example: nothing left from the last one
            self.prefix = f"model{next(_PREFIXES)}"
            self.backends.append(RedisBackend(f"{REDIS}?prefix={self.prefix}", clock=self.clock))
            self.redis = redis.Redis.from_url(REDIS)
        self.ids: list[str] = []
        self.leases: list[Lease] = []  # every lease ever handed out, stale ones included
        self.n = 0

    def teardown(self) -> None:
        for b in self.backends:
            self.loop.run_until_complete(b.aclose())
        if self.redis is not None:
            keys = list(self.redis.scan_iter(match=f"{{{self.prefix}}}:*", count=1000))
            if keys:
                self.redis.delete(*keys)
            self.redis.close()
        self.loop.close()
        self.tmp.cleanup()

    def run(self, op: str, *args: object) -> list[object]:
        """`op` on every backend; their answers, the reference's first."""
        return [self.loop.run_until_complete(getattr(b, op)(*args)) for b in self.backends]

    def both(self, op: str, *args: object) -> object:
        """Run `op` on every backend; the answers must agree. Returns the reference's."""
        answers = self.run(op, *args)
        assert all(a == answers[0] for a in answers), (op, args, answers)
        return answers[0]

    @rule(
        count=st.integers(1, 3),
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-1, 1),
        delay=st.sampled_from([0.0, 0.0, 0.5, 5.0]),
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
        self.ids += [j.id for j, holder in zip(jobs, stored, strict=True) if holder == j.id]

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
        assert all(x == ids[0] for x in ids), ids
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
        assert all(x == got[0] for x in got), got

    @rule(seconds=st.sampled_from([1.0, 3.0, 6.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def rescue(self) -> None:
        self.both("rescue")

    @rule()
    def promote(self) -> None:
        # How many a store moves depends on what its claims promoted already (see
        # `effective`): each must move exactly the due scheduled jobs it holds.
        due = [
            sum(j is not None and self.effective(j) is not j.state for j in jobs)
            for jobs in self.run("get", self.ids)
        ]
        assert self.run("promote") == due

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

    @rule()
    def list_by_state_and_in_pages(self) -> None:
        """`query` by queue and by each state, and the whole listing four at a time: the
        same on every store (a rule, not an invariant: it costs a dozen round trips)."""
        views = self.run("get", self.ids)
        paged = [[j.id for j in self.pages(b)] for b in self.backends]
        assert all(p == paged[0] for p in paged), paged
        assert paged[0] == [i for i, j in zip(self.ids, views[0], strict=True) if j is not None]
        in_a = [[j.id for j in p.jobs] for p in self.run("query", JobFilter(queue="a"), None, 1000)]
        assert all(p == in_a[0] for p in in_a), in_a
        by_state: list[dict[JobState, list[str]]] = []
        for b in self.backends:
            found: dict[JobState, list[str]] = {}
            for state in JobState:
                page = self.loop.run_until_complete(b.query(JobFilter(state=state), None, 1000))
                for j in page.jobs:
                    found.setdefault(self.effective(j), []).append(j.id)
            by_state.append({s: sorted(ids) for s, ids in found.items()})
        assert all(x == by_state[0] for x in by_state), by_state

    def effective(self, job: Job) -> JobState:
        """`job`'s state, a due scheduled job counted as queued. Both are ready, and stores
        promote at different moments: memory and SQLite promote every due job at each claim,
        Redis only in the queues a claim reaches (and all at `promote`)."""
        if job.state is JobState.SCHEDULED and job.run_at <= self.clock.now():
            return JobState.QUEUED
        return job.state

    @invariant()
    def same_jobs_and_consistent(self) -> None:
        gets = self.run("get", self.ids)
        views = [
            [
                None
                if j is None
                else (
                    self.effective(j),
                    j.queue,
                    j.attempts,
                    j.run_at,
                    j.cancel_requested,
                    tuple(e.type for e in j.errors),
                    j.result,
                )
                for j in jobs
            ]
            for jobs in gets
        ]
        assert all(v == views[0] for v in views), views
        counts = [self.counts(c, jobs) for c, jobs in zip(self.run("counts"), gets, strict=True)]
        assert all(c == counts[0] for c in counts), counts
        pages = [
            [(j.id, self.effective(j)) for j in p.jobs]
            for p in self.run("query", JobFilter(), None, 1000)
        ]
        assert all(p == pages[0] for p in pages), pages
        if self.redis is not None:
            assert index_problems(self.redis, self.prefix) == []

    def counts(
        self, counts: dict[str, dict[JobState, int]], jobs: list[Job | None]
    ) -> dict[str, dict[JobState, int]]:
        """`counts` with the due scheduled jobs among `jobs` moved to queued (see
        `effective`)."""
        out = {q: dict(per) for q, per in counts.items()}
        for j in jobs:
            if j is not None and j.state is JobState.SCHEDULED and self.effective(j) is not j.state:
                per = out[j.queue]
                per[JobState.SCHEDULED] -= 1
                per[JobState.QUEUED] = per.get(JobState.QUEUED, 0) + 1
                if not per[JobState.SCHEDULED]:
                    del per[JobState.SCHEDULED]
        return out

    def pages(self, backend: Backend) -> list[Job]:
        """Every job, listed four at a time."""
        out: list[Job] = []
        after: str | None = None
        while True:
            page = self.loop.run_until_complete(backend.query(JobFilter(), after, 4))
            out += page.jobs
            if page.next is None:
                return out
            after = page.next

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
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSameAnswers = SameAnswers.TestCase
