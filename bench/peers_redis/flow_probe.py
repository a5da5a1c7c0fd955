"""What the flow bench's tasks call (bench/bench_flow.py, section "peers"), the same for every
system.

- ``limited_start()``: the rate-limited task's body began (after the system's limiter let it
  through). Every start time is kept: the bench computes the achieved rate and the worst
  sliding 1-s window from them.
- ``free_hit(start)``: an unlimited job's body ran from `start` until now (count, first
  start, last end, as ``probe.hit``).

Nothing goes to Redis on the task's path: a daemon thread per process (started lazily, so
forked pool children get their own) writes every 20 ms, to the probe database
(``BENCH_PROBE_URL``):

    RPUSH flowbench:starts <start> ...
    HSET flowbench:free <pid> "<count> <first start> <last end>"
"""

from __future__ import annotations

import os
import threading
import time

import redis

__all__ = ["FREE", "STARTS", "free_hit", "limited_start", "plan"]

STARTS = "flowbench:starts"
FREE = "flowbench:free"
_FLUSH_EVERY = 0.02

_lock = threading.Lock()
_state: _State | None = None


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.starts: list[float] = []
        self.dirty = False
        self.client = redis.Redis.from_url(os.environ["BENCH_PROBE_URL"])
        threading.Thread(target=self._flush_loop, name="flow-probe", daemon=True).start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY)
            with _lock:
                if not self.dirty:
                    continue
                record = f"{self.count} {self.first!r} {self.last!r}" if self.count else ""
                starts, self.starts = self.starts, []
                self.dirty = False
            try:
                pipe = self.client.pipeline(transaction=False)
                if record:
                    pipe.hset(FREE, str(self.pid), record)
                if starts:
                    pipe.rpush(STARTS, *(repr(x) for x in starts))
                pipe.execute()
            except redis.RedisError:
                pass  # the bench flushed or stopped the server


def plan(n_limited: int, n_free: int, mix: str, chunk: int = 100) -> list[tuple[str, int]]:
    """The enqueue order as runs of ("limited" | "free", count). ``head``: the limited
    backlog first, the unlimited jobs behind it; ``mixed``: spread evenly, each `chunk` jobs
    holding their share of limited ones, then unlimited ones."""
    if mix == "head":
        return [("limited", n_limited), ("free", n_free)]
    total, runs, done_l, done_f = n_limited + n_free, [], 0, 0
    for end in range(chunk, total + chunk, chunk):
        end = min(end, total)
        want_l = n_limited * end // total
        runs += [("limited", want_l - done_l), ("free", end - want_l - done_f)]
        done_l, done_f = want_l, end - want_l
    return [(kind, k) for kind, k in runs if k]


def _get() -> _State:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        with _lock:
            state = _state
            if state is None or state.pid != os.getpid():
                state = _state = _State()
    return state


def limited_start() -> None:
    """The limited task's body starts now."""
    now = time.time()
    state = _get()
    with _lock:
        state.starts.append(now)
        state.dirty = True


def free_hit(start: float) -> None:
    """An unlimited job's body ran from `start` until now."""
    state = _get()
    end = time.time()
    with _lock:
        state.count += 1
        if state.count == 1 or start < state.first:
            state.first = start
        if end > state.last:
            state.last = end
        state.dirty = True
