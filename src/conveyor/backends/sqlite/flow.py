"""The SQL of flow control (`Backend.claim`'s lanes), inside the caller's write transaction.

The `lanes` rows' `ready`/`running` counts, a claim's pass, token and probe, and the slot
coming back on every exit from running are kept by the triggers of schema version 5. This
module does the rest: a claim's turns (plain jobs against the eligible lanes, by pass),
parking the lanes left without capacity, the circuits' counting on settle and rescue, and
`FlowControl`. A queue with no eligible lane costs one indexed look at `lanes`.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from conveyor.backends.sqlite.schema import COLUMNS
from conveyor.capabilities import LaneInfo
from conveyor.fields import NAMES
from conveyor.flow import Circuit

__all__ = [
    "HAND",
    "SLOT",
    "Exit",
    "claim",
    "claim_order",
    "exits",
    "forget_idle",
    "lanes",
    "next_wake",
    "set_circuit",
]

#: `lanes.wake` of a lane parked until a slot comes back (the triggers unpark it).
SLOT = 1e300
#: `lanes.wake` of a lane opened by hand with no end.
HAND = 2e300

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: (queue, lane, job id, outcome): a lane job with a circuit left running; outcome is
#: "success", "failure" or None (cancelled or released: not counted).
Exit = tuple[str, str, str, str | None]

_LOAD = (
    "SELECT lane, ready, running, weight, concurrency, rate, burst, tokens, tokens_at, "
    "circuit, state, until, probe, pass, active FROM lanes "
    "WHERE queue = ? AND wake <= ? AND ready > 0"
)


# Positions in a `COLUMNS` row: seq, the record's fields, token.
_PRIORITY, _RUN_AT = 1 + NAMES.index("priority"), 1 + NAMES.index("run_at")


def claim_order(row: Sequence[object]) -> tuple[object, ...]:
    """The sort key that puts claimed rows in claim order (RETURNING gives none)."""
    return (-row[_PRIORITY], row[_RUN_AT], row[0])  # type: ignore[operator]


class _Lane:
    """A loaded `lanes` row, stepped by a claim."""

    __slots__ = (
        "active", "burst", "cap", "changed", "circuit", "concurrency", "name", "pass_",
        "probe", "rate", "ready", "running", "state", "taken", "tokens", "until", "weight",
    )  # fmt: skip

    def __init__(self, row: Sequence[object], now: float) -> None:
        (name, ready, running, weight, concurrency, rate, burst, tokens, tokens_at,
         circuit, state, until, probe, pass_, active) = row  # fmt: skip
        self.name, self.ready, self.running = str(name), int(ready), int(running)  # type: ignore[call-overload]
        self.weight = max(1, int(weight))  # type: ignore[call-overload]
        self.concurrency, self.rate = int(concurrency), float(rate)  # type: ignore[call-overload, arg-type]
        self.burst, self.circuit = int(burst), str(circuit)  # type: ignore[call-overload]
        self.state = str(state)
        self.until = None if until is None else float(until)  # type: ignore[arg-type]
        self.probe = None if probe is None else str(probe)
        self.pass_, self.active = float(pass_), bool(active)  # type: ignore[arg-type]
        self.changed = False
        # Refill, and an open circuit whose cooldown ended turns half-open.
        if tokens is None or tokens_at is None:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(
                float(self.burst),
                float(tokens) + (now - float(tokens_at)) * self.rate,  # type: ignore[arg-type]
            )
        if self.rate > 0:
            self.changed = True  # the refilled bucket is written back
        if self.state == OPEN and self.until is not None and self.until <= now:
            self.changed = True
            if self.circuit:
                self.state, self.until = HALF_OPEN, None
            else:  # opened by hand on a lane with no circuit: closed again
                self.state, self.until, self.probe = CLOSED, None, None
        self.taken = 0
        self.cap = self._capacity()

    def _capacity(self) -> int:
        """How many jobs it may start now."""
        cap = self.ready
        if self.concurrency > 0:
            cap = min(cap, self.concurrency - self.running)
        if self.rate > 0:
            cap = min(cap, math.floor(self.tokens + 1e-9))
        if self.state == OPEN or (self.state == HALF_OPEN and self.probe is not None):
            cap = 0
        elif self.state == HALF_OPEN:
            cap = min(cap, 1)
        return max(0, int(cap))

    def wake(self, now: float) -> float:
        """When a lane without capacity may take a job again (its `wake` while parked)."""
        if self.state == OPEN:
            return HAND if self.until is None else self.until
        if self.rate > 0 and self.tokens - self.taken < 1:
            return now + (1 - (self.tokens - self.taken)) / self.rate
        return SLOT


def _turns(queue: str, conn: sqlite3.Connection) -> tuple[float, float, bool]:
    row = conn.execute(
        "SELECT vtime, plain_pass, plain_active FROM turns WHERE queue = ?", (queue,)
    ).fetchone()
    return (0.0, 0.0, False) if row is None else (float(row[0]), float(row[1]), bool(row[2]))


def _simulate(
    lanes: list[_Lane], want: int, plain_cap: int, turns: tuple[float, float, bool]
) -> tuple[list[_Lane | None], tuple[float, float, bool]]:
    """The claim's turns: who is served, in order (None: a plain job), and the queue's new
    turns. Sets each lane's `taken`, and the pass it starts at (`pass_`: a lane that
    becomes eligible starts at no less than the queue's virtual time)."""
    vtime, plain_pass, plain_active = turns
    order: list[_Lane | None] = []
    heap: list[tuple[float, int, str, int]] = []
    for i, lane in enumerate(lanes):
        lane.taken = 0
        if not lane.active:
            lane.pass_, lane.active, lane.changed = max(lane.pass_, vtime), True, True
        heap.append((lane.pass_, 1, lane.name, i))
    heapq.heapify(heap)
    plain_n = 0
    while len(order) < want:
        plain_ok = plain_n < plain_cap
        if plain_ok and not plain_active:
            plain_pass, plain_active = max(plain_pass, vtime), True
        elif not plain_ok:
            plain_active = False
        top = heap[0] if heap else None
        if plain_ok and (top is None or (plain_pass, 0, "") < top[:3]):
            vtime = plain_pass
            plain_pass += 1.0
            plain_n += 1
            order.append(None)
            continue
        if top is None:
            break
        p, _, name, i = top
        lane = lanes[i]
        vtime = p
        lane.taken += 1
        order.append(lane)
        if lane.taken < lane.cap:
            heapq.heapreplace(heap, (p + 1.0 / lane.weight, 1, name, i))
        else:  # no capacity left: it is parked (or empty) and eligible again from vtime
            heapq.heappop(heap)
            lane.active, lane.changed = False, True
    if plain_n >= plain_cap:
        plain_active = False
    return order, (vtime, plain_pass, plain_active)


def claim(
    conn: sqlite3.Connection,
    queue: str,
    want: int,
    plain_sql: str,
    claim_set: str,
    params: tuple[object, ...],
    now: float,
) -> list[Any] | None:
    """Claim up to `want` jobs of `queue` in turns; their rows in claim order. None when
    no lane of the queue is eligible (the caller runs the plain claim)."""
    rows = conn.execute(_LOAD, (queue, now)).fetchall()
    if not rows:
        return None
    lanes = [_Lane(r, now) for r in rows]
    park = [lane for lane in lanes if lane.cap == 0]
    live = [lane for lane in lanes if lane.cap > 0]
    if not live:
        _park(conn, queue, park, now)
        return None
    turns = _turns(queue, conn)
    order, after = _simulate(live, want, want, turns)
    plain_n = sum(1 for o in order if o is None)
    plain_rows: list[Sequence[object]] = []
    if plain_n:
        plain_rows = conn.execute(plain_sql, (*params, queue, plain_n)).fetchall()
        if len(plain_rows) < plain_n:  # fewer plain jobs than turns: the lanes take the rest
            order, after = _simulate(live, want, len(plain_rows), turns)
    # The lanes' state before the claim (refilled bucket, half-open, starting pass); the
    # claim's own effects (pass, token, probe, counts) are the triggers'.
    pre = [lane for lane in live if lane.changed]
    if pre:
        conn.executemany(
            "UPDATE lanes SET pass = ?, active = ?, tokens = ?, tokens_at = ?, state = ?, "
            "until = ?, probe = ? WHERE queue = ? AND lane = ?",
            [
                (lane.pass_, int(lane.active), lane.tokens if lane.rate > 0 else None,
                 now if lane.rate > 0 else None, lane.state, lane.until, lane.probe, queue,
                 lane.name)
                for lane in pre
            ],
        )  # fmt: skip
    served = [lane for lane in live if lane.taken]
    # `lane = +?`, not `lane = ?`: a bound value compared with a column that a partial
    # index's WHERE names (jobs_ready: lane = '') makes SQLite prepare the statement again
    # for every new value (50 us instead of 7 per lane).
    by_lane: dict[str, list[Sequence[object]]] = {}
    for start in range(0, len(served), 200):
        chunk = served[start : start + 200]
        union = " UNION ALL ".join(
            "SELECT seq FROM (SELECT seq FROM jobs WHERE state = 'queued' AND lane != '' "
            "AND queue = ? AND lane = +? ORDER BY priority DESC, run_at, seq LIMIT ?)"
            for _ in chunk
        )
        args: list[object] = list(params)
        for lane in chunk:
            args += (queue, lane.name, lane.taken)
        for row in conn.execute(
            f"{claim_set} WHERE seq IN ({union}) RETURNING {COLUMNS}, lane", args
        ):
            by_lane.setdefault(row[-1], []).append(row[:-1])
    # Lanes left without capacity (and ready jobs) are parked.
    for lane in served:
        if lane.taken >= lane.cap and lane.ready > lane.taken:
            park.append(lane)
    _park(conn, queue, park, now)
    conn.execute(
        "INSERT INTO turns (queue, vtime, plain_pass, plain_active) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (queue) DO UPDATE SET vtime = excluded.vtime, "
        "plain_pass = excluded.plain_pass, plain_active = excluded.plain_active",
        (queue, after[0], after[1], int(after[2])),
    )
    return _in_order(order, plain_rows, by_lane)


def _in_order(
    order: list[_Lane | None],
    plain_rows: list[Sequence[object]],
    by_lane: dict[str, list[Sequence[object]]],
) -> list[Sequence[object]]:
    plain_rows.sort(key=claim_order)
    for got in by_lane.values():
        got.sort(key=claim_order)
    out: list[Sequence[object]] = []
    at: dict[str, int] = {}
    plain_i = 0
    for who in order:
        if who is None:
            if plain_i < len(plain_rows):
                out.append(plain_rows[plain_i])
                plain_i += 1
            continue
        got = by_lane.get(who.name, [])
        i = at.get(who.name, 0)
        if i < len(got):
            out.append(got[i])
            at[who.name] = i + 1
    return out


def _park(conn: sqlite3.Connection, queue: str, lanes: list[_Lane], now: float) -> None:
    if not lanes:
        return
    conn.executemany(
        "UPDATE lanes SET wake = ?, active = 0, tokens = CASE WHEN rate > 0 THEN "
        "coalesce(tokens, ?) ELSE tokens END, tokens_at = CASE WHEN rate > 0 THEN "
        "coalesce(tokens_at, ?) ELSE tokens_at END, state = ?, until = ? "
        "WHERE queue = ? AND lane = ?",
        [
            (lane.wake(now), float(lane.burst), now, lane.state, lane.until, queue, lane.name)
            for lane in lanes
        ],
    )  # fmt: skip
    # A parked lane that was not served keeps its refilled bucket: write it.
    refill = [lane for lane in lanes if lane.rate > 0 and not lane.taken]
    if refill:
        conn.executemany(
            "UPDATE lanes SET tokens = ?, tokens_at = ? WHERE queue = ? AND lane = ?",
            [(lane.tokens, now, queue, lane.name) for lane in refill],
        )


def exits(conn: sqlite3.Connection, items: Sequence[Exit], now: float) -> None:
    """Circuits count the outcomes of lane jobs that left running (see `Backend.claim`)."""
    for queue, name, job_id, outcome in items:
        row = conn.execute(
            "SELECT circuit, state, until, window_start, calls, failures, probe FROM lanes "
            "WHERE queue = ? AND lane = ?",
            (queue, name),
        ).fetchone()
        if row is None:
            continue
        circuit, state, until, start, calls, failures, probe = row
        wake: float | None = None
        if probe == job_id:
            probe = None
            wake = 0.0
            if outcome == "success":
                state, until, start, calls, failures = CLOSED, None, None, 0, 0
            elif outcome == "failure":
                state, until = OPEN, now + Circuit.from_spec(circuit).cooldown
                wake = until
        elif circuit and outcome is not None and state == CLOSED:
            spec = Circuit.from_spec(circuit)
            if start is None or now >= start + spec.window:
                start, calls, failures = now, 0, 0
            calls += 1
            failures += outcome == "failure"
            if calls >= spec.min_calls and failures >= spec.failure_rate * calls:
                state, until, probe = OPEN, now + spec.cooldown, None
                wake = until
        else:
            continue
        conn.execute(
            "UPDATE lanes SET state = ?, until = ?, window_start = ?, calls = ?, failures = ?, "
            "probe = ?, wake = coalesce(?, wake), active = CASE WHEN ? IS NULL THEN active "
            "ELSE 0 END WHERE queue = ? AND lane = ?",
            (state, until, start, calls, failures, probe, wake, wake, queue, name),
        )


def set_circuit(
    conn: sqlite3.Connection, queue: str, name: str, state: str, duration: float | None, now: float
) -> str:
    """`FlowControl.set_circuit` (arguments checked by the caller): the state it was in."""
    row = conn.execute(
        "SELECT state, until, circuit FROM lanes WHERE queue = ? AND lane = ?", (queue, name)
    ).fetchone()
    old = CLOSED
    if row is not None:
        old = str(row[0])
        if old == OPEN and row[1] is not None and row[1] <= now:
            old = HALF_OPEN if row[2] else CLOSED
    else:
        conn.execute("INSERT INTO lanes (queue, lane) VALUES (?, ?)", (queue, name))
    if state == OPEN:
        until = None if duration is None else now + duration
        conn.execute(
            "UPDATE lanes SET state = 'open', until = ?, probe = NULL, wake = ?, active = 0 "
            "WHERE queue = ? AND lane = ?",
            (until, HAND if until is None else until, queue, name),
        )
    else:
        conn.execute(
            "UPDATE lanes SET state = 'closed', until = NULL, probe = NULL, wake = 0, "
            "window_start = NULL, calls = 0, failures = 0 WHERE queue = ? AND lane = ?",
            (queue, name),
        )
    return old


_INFO = (
    "SELECT queue, lane, ready, running, weight, concurrency, rate, burst, tokens, tokens_at, "
    "circuit, state, until, window_start, calls, failures FROM lanes"
)


def _idle(row: Sequence[object], tokens: float, state: str, now: float) -> bool:
    """No jobs, a full bucket, closed, nothing counted in a live window."""
    ready, running, rate, burst, circuit = row[2], row[3], row[6], row[7], row[10]
    start, calls = row[13], row[14]
    if ready or running or state != CLOSED:
        return False
    if float(rate) > 0 and tokens < float(burst):  # type: ignore[arg-type]
        return False
    if calls and start is not None:
        window = Circuit.from_spec(str(circuit)).window if circuit else math.inf
        if now < float(start) + window:  # type: ignore[arg-type]
            return False
    return True


def _view(row: Sequence[object], now: float) -> tuple[float, str, float | None]:
    """A row's tokens (refilled), circuit state and open-until, as of `now`."""
    rate, burst, tokens, tokens_at = (float(row[6]), float(row[7]), row[8], row[9])  # type: ignore[arg-type]
    if tokens is None or tokens_at is None:
        level = burst
    else:
        level = min(burst, float(tokens) + (now - float(tokens_at)) * rate)  # type: ignore[arg-type]
    state, until = str(row[11]), row[12]
    if state == OPEN and until is not None and float(until) <= now:  # type: ignore[arg-type]
        state, until = (HALF_OPEN if row[10] else CLOSED), None
    return level, state, None if until is None else float(until)  # type: ignore[arg-type]


def lanes(conn: sqlite3.Connection, queue: str | None, now: float) -> list[LaneInfo]:
    """`FlowControl.lanes`: the lanes kept, idle ones left out, by queue then name."""
    sql, args = _INFO, ()
    if queue is not None:
        sql, args = sql + " WHERE queue = ?", (queue,)  # type: ignore[assignment]
    out: list[LaneInfo] = []
    for row in conn.execute(sql + " ORDER BY queue, lane", args):
        tokens, state, until = _view(row, now)
        if _idle(row, tokens, state, now):
            continue
        rate = float(row[6])
        out.append(
            LaneInfo(
                queue=row[0], lane=row[1], ready=row[2], running=row[3], weight=row[4],
                concurrency=row[5], rate=rate, burst=row[7],
                tokens=tokens if rate > 0 else 0.0, circuit=row[10], circuit_state=state,
                open_until=until if state == OPEN else None,
                calls=row[14], failures=row[15],
            )
        )  # fmt: skip
    return out


def forget_idle(conn: sqlite3.Connection, now: float) -> int:
    """Delete the lanes with nothing left to keep (see `lanes`); how many."""
    gone = [
        (row[0], row[1])
        for row in conn.execute(_INFO + " WHERE ready = 0 AND running = 0")
        if _idle(row, *_view(row, now)[:2], now)
    ]
    conn.executemany("DELETE FROM lanes WHERE queue = ? AND lane = ?", gone)
    return len(gone)


def next_wake(conn: sqlite3.Connection, queues: Sequence[str], now: float) -> float | None:
    """Seconds until a lane of `queues` with ready jobs may take one (0: one may now);
    None if every such lane waits for a slot or a hand."""
    marks = ",".join("?" * len(queues))
    (due,) = conn.execute(
        f"SELECT min(wake) FROM lanes WHERE queue IN ({marks}) AND ready > 0 AND wake < ? "
        "AND queue NOT IN (SELECT queue FROM paused)",
        (*queues, SLOT),
    ).fetchone()
    return None if due is None else max(0.0, float(due) - now)
