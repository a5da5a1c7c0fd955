"""What every system's benchmark tasks call, so all systems are measured the same way.

A task calls ``hit(start)`` when its no-op body ends (``start`` = ``time.time()`` at its
beginning) or ``latency(sent)`` when a latency probe starts (``sent`` = the enqueuer's
``time.time()`` just before the enqueue call). Nothing goes to Redis on the task's own path:
the process keeps a count, the first start and the last end in memory, and a daemon thread
(started lazily, once per process: forked pool children get their own) writes them every
20 ms to a hash on the probe database, one field per process:

    HSET peerbench:hits <pid> "<count> <first start> <last end>"
    RPUSH peerbench:lat <seconds> ...

The bench sums the fields: drain rate = count / (max last end - min first start).

``BENCH_PROBE_DIRECT=1`` (RQ, which forks a fresh process per job, so a thread would die
with it) writes each hit and sample straight away instead.

The probe's Redis URL is ``BENCH_PROBE_URL`` (its own database on the same server).
"""

from __future__ import annotations

import os
import threading
import time

import redis

__all__ = ["HITS", "LAT", "hit", "latency"]

HITS = "peerbench:hits"
LAT = "peerbench:lat"
_FLUSH_EVERY = 0.02

_lock = threading.Lock()
_state: _State | None = None


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.lat: list[float] = []
        self.dirty = False
        self.direct = os.environ.get("BENCH_PROBE_DIRECT") == "1"
        self.client = redis.Redis.from_url(os.environ["BENCH_PROBE_URL"])
        if not self.direct:
            threading.Thread(target=self._flush_loop, name="bench-probe", daemon=True).start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY)
            with _lock:
                if not self.dirty:
                    continue
                record = f"{self.count} {self.first!r} {self.last!r}"
                lat, self.lat = self.lat, []
                self.dirty = False
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(HITS, str(self.pid), record)
                if lat:
                    pipe.rpush(LAT, *(repr(x) for x in lat))
                pipe.execute()
            except redis.RedisError:
                pass  # the bench flushed or stopped the server; nothing to report to


def _get() -> _State:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        with _lock:
            state = _state
            if state is None or state.pid != os.getpid():
                state = _state = _State()
    return state


def hit(start: float) -> None:
    """A no-op job's body ran from `start` until now."""
    state = _get()
    end = time.time()
    with _lock:
        state.count += 1
        if state.count == 1 or start < state.first:
            state.first = start
        if end > state.last:
            state.last = end
        state.dirty = True
        if state.direct:
            # One field per job (RQ: one process per job; the counter makes it unique anyway).
            state.client.hset(HITS, f"{state.pid}:{state.count}", f"1 {start!r} {end!r}")


def latency(sent: float) -> None:
    """A latency probe started now; `sent` is when its enqueue call began."""
    now = time.time()
    state = _get()
    if state.direct:
        state.client.rpush(LAT, repr(now - sent))
        return
    with _lock:
        state.lat.append(now - sent)
        state.dirty = True
