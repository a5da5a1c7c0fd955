"""One lane of flow control as a state machine: slots, a token bucket and a circuit.

The rules of `Backend.claim` for one lane, as plain Python with no I/O, for the stores that
run Python inside their atomic step (memory; SQLite inside its write transaction may load a
row into a `Lane`, step it and write it back). Redis runs the same rules in Lua.

Example:
    lane = Lane.new(job, now)
    if lane.can_take(now):
        lane.take(job.id, now)
    ...
    woke = lane.left(job.id, outcome_of(running, settled), now)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conveyor.capabilities import LaneInfo
from conveyor.errors import InvalidOption
from conveyor.flow import Circuit
from conveyor.job import Job, JobState
from conveyor.names import check_key, check_queue

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Lane", "check_circuit_change", "outcome_of"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def check_circuit_change(queue: str, lane: str, state: str, duration: float | None) -> None:
    """Refuse a bad `FlowControl.set_circuit` call (`InvalidOption` naming the problem)."""
    check_queue(queue)
    if not isinstance(lane, str) or not lane:
        raise InvalidOption(f"lane must be a non-empty string, got {lane!r}")
    check_key(lane)
    if state not in (OPEN, CLOSED):
        raise InvalidOption(f"circuit state must be 'open' or 'closed', got {state!r}")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration < math.inf
    ):
        raise InvalidOption(f"circuit duration must be a number of seconds > 0, got {duration!r}")


def outcome_of(running: Job, after: Job) -> str | None:
    """How a job's exit from running counts for its lane's circuit: ``"success"``
    (completed), ``"failure"`` (failed for good, or back to be retried with a new error: a
    `Retrying` settle or a rescue), or None (cancelled, or released with no error)."""
    if after.state is JobState.COMPLETED:
        return "success"
    if after.state is JobState.FAILED:
        return "failure"
    if after.state is not JobState.CANCELLED and len(after.errors) > len(running.errors):
        return "failure"
    return None


@dataclass(slots=True)
class Lane:
    """The state of one lane (see `Backend.claim`). Times are the store's clock."""

    weight: int = 1
    concurrency: int = 0
    rate: float = 0.0
    burst: int = 0
    circuit: str = ""
    pass_: float = 0.0
    active: bool = False  # eligible at the last claim that looked (else it restarts at vtime)
    tokens: float = 0.0
    tokens_at: float = 0.0
    slots: set[str] = field(default_factory=set)
    state: str = CLOSED
    until: float | None = None  # while open: when it turns half-open (None: by hand only)
    window_start: float | None = None
    calls: int = 0
    failures: int = 0
    probe: str | None = None

    @classmethod
    def new(cls, job: Job, now: float) -> Lane:
        """A lane first seen with `job` (its bucket full)."""
        lane = cls(tokens=float(job.burst), tokens_at=now)
        lane.configure(job)
        return lane

    def configure(self, job: Job) -> None:
        """Take `job`'s weight and limits (the latest job to become ready sets them)."""
        self.weight, self.concurrency, self.circuit = (
            max(1, job.weight),
            job.concurrency,
            job.circuit,
        )
        self.rate, self.burst = job.rate, job.burst
        self.tokens = min(self.tokens, float(self.burst))

    def _refill(self, now: float) -> None:
        if self.rate > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.tokens_at) * self.rate)
        self.tokens_at = now
        if self.state == OPEN and self.until is not None and self.until <= now:
            if self.circuit:
                self.state, self.until = HALF_OPEN, None
            else:  # opened by hand on a lane with no circuit: no probe to judge, so closed
                self._close()

    def can_take(self, now: float) -> bool:
        """Whether one more job may start now (a free slot, a token, the circuit)."""
        self._refill(now)
        if self.concurrency > 0 and len(self.slots) >= self.concurrency:
            return False
        if self.rate > 0 and self.tokens < 1:
            return False
        if self.state == OPEN:
            return False
        return not (self.state == HALF_OPEN and self.probe is not None)

    def take(self, job_id: str, now: float) -> None:
        """Start `job_id` (after `can_take`): its slot (kept whatever the concurrency: the
        lane's running count), its token, the probe."""
        self.slots.add(job_id)
        if self.rate > 0:
            self.tokens -= 1
        if self.state == HALF_OPEN:
            self.probe = job_id

    def left(self, job_id: str, outcome: str | None, now: float) -> bool:
        """`job_id` left running with `outcome` (see `outcome_of`): its slot comes back and
        its circuit counts it. True if that may make the lane eligible again."""
        freed = job_id in self.slots and self.concurrency > 0
        self.slots.discard(job_id)
        if self.probe == job_id:
            self.probe = None
            if outcome == "success":
                self._close()
            elif outcome == "failure":
                self._open_for(now, Circuit.from_spec(self.circuit).cooldown)
            return True
        if self.circuit and outcome is not None and self.state == CLOSED:
            spec = Circuit.from_spec(self.circuit)
            if self.window_start is None or now >= self.window_start + spec.window:
                self.window_start, self.calls, self.failures = now, 0, 0
            self.calls += 1
            self.failures += outcome == "failure"
            if self.calls >= spec.min_calls and self.failures >= spec.failure_rate * self.calls:
                self._open_for(now, spec.cooldown)
        return freed

    def _close(self) -> None:
        self.state, self.until, self.probe = CLOSED, None, None
        self.window_start, self.calls, self.failures = None, 0, 0

    def _open_for(self, now: float, duration: float | None) -> None:
        self.state, self.probe = OPEN, None
        self.until = None if duration is None else now + duration

    def set_circuit(self, state: str, duration: float | None, now: float) -> str:
        """Open (for `duration` s, None: until closed) or close by hand; the old state."""
        self._refill(now)
        old = self.state
        if state == OPEN:
            self._open_for(now, duration)
        else:
            self._close()
        return old

    def wake_at(self, now: float) -> float | None:
        """When a lane parked on its bucket or its cooldown may take a job again (None:
        not parked on a timer)."""
        self._refill(now)
        if self.state == OPEN:
            return self.until
        if self.rate > 0 and self.tokens < 1:
            return now + (1 - self.tokens) / self.rate
        return None

    def idle(self, now: float) -> bool:
        """Nothing to keep (no running job, full bucket, closed, nothing counted): a lane
        with no ready job in this state may be forgotten."""
        self._refill(now)
        counted = self.window_start is not None and self.calls > 0
        if self.circuit and self.window_start is not None and counted:
            counted = now < self.window_start + Circuit.from_spec(self.circuit).window
        full = self.rate <= 0 or self.tokens >= self.burst
        return not self.slots and full and self.state == CLOSED and not counted

    def info(self, queue: str, name: str, ready: int, now: float) -> LaneInfo:
        """The lane as `FlowControl.lanes` lists it."""
        self._refill(now)
        until = self.until if self.state == OPEN else None
        return LaneInfo(
            queue=queue,
            lane=name,
            ready=ready,
            running=len(self.slots),
            weight=self.weight,
            concurrency=self.concurrency,
            rate=self.rate,
            burst=self.burst,
            tokens=self.tokens if self.rate > 0 else 0.0,
            circuit=self.circuit,
            circuit_state=self.state,
            open_until=until if until is None or math.isfinite(until) else None,
            calls=self.calls,
            failures=self.failures,
        )
