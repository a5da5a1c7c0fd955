"""`conveyor worker --autoscale MIN:MAX`: a supervisor sizing its worker processes to the backlog.

It keeps between MIN and MAX worker processes. Every `poll` seconds it asks the store for
the oldest ready job of each of the worker's queues (``query(queued, limit=1)`` per queue:
one small read, no new store operation) and reads the machine's idle CPU (``/proc/stat``,
else the load average). It adds a process while that job is older than `target` seconds
and enough CPU is idle, and retires one (SIGTERM: the worker stops claiming, finishes what
it runs, exits) once no job has been ready for `idle` seconds. At most one change per
`interval`; each is logged with its reason. A process that dies is replaced.

The decision (`Scaler`) is apart from the processes, so it is tested on its own. Like
`supervise`, this lives at the CLI edge: it owns signals and child processes, and times
itself with the machine's monotonic clock; job ages come from the store's clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conveyor.app import App
from conveyor.backends.base import Backend, JobFilter
from conveyor.capabilities import FlowControl, QueueControl
from conveyor.errors import ConfigError, ConveyorError
from conveyor.job import JobState
from conveyor.worker.config import parse_queues

__all__ = ["CpuMeter", "ScalePolicy", "Scaler", "autoscale", "parse_range", "serving"]

log = logging.getLogger("conveyor.cli")

MAX_PROCESSES = 256


def parse_range(spec: str) -> tuple[int, int]:
    """``"MIN:MAX"`` as two whole numbers, 1 <= MIN <= MAX <= 256.

    Raises:
        ConfigError: the text is not of that form, or the bounds are out of order or range.
    """
    low, sep, high = spec.partition(":")
    try:
        if not sep:
            raise ValueError(spec)
        lo, hi = int(low), int(high)
    except ValueError:
        raise ConfigError(f"{spec!r} is not MIN:MAX with two whole numbers, e.g. 1:8") from None
    if lo < 1:
        raise ConfigError(f"{spec!r}: MIN must be at least 1 process, got {lo}")
    if lo > hi:
        raise ConfigError(f"{spec!r}: MIN {lo} is above MAX {hi}; write the smaller first")
    if hi > MAX_PROCESSES:
        raise ConfigError(f"{spec!r}: MAX {hi} is above {MAX_PROCESSES} processes")
    return lo, hi


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """When to add and retire processes.

    Attributes:
        min: fewest processes (>= 1).
        max: most processes (>= min).
        target: add a process while the oldest ready job is older than this (seconds).
        idle: retire a process after this many seconds with no ready job.
        interval: least seconds between two changes (and after the start).
        cpu_idle: least share of idle CPU (0..1) needed to add a process; 0 ignores CPU.
        poll: seconds between two looks at the store and the CPU.
    """

    min: int
    max: int
    target: float = 1.0
    idle: float = 30.0
    interval: float = 2.0
    cpu_idle: float = 0.2
    poll: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max <= MAX_PROCESSES:
            raise ConfigError(
                f"autoscale needs 1 <= MIN <= MAX <= {MAX_PROCESSES}, got {self.min}:{self.max}"
            )
        for name in ("target", "idle", "interval", "poll"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"autoscale {name} must be > 0 seconds, got {value!r}")
        if not 0 <= self.cpu_idle <= 1:
            raise ConfigError(f"autoscale cpu_idle must be a share in 0..1, got {self.cpu_idle!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the backlog and the machine.

    Attributes:
        age: seconds the oldest ready job has waited, `None` when no job is ready.
        cpu_idle: share of CPU idle since the last look, `None` if unknown.
    """

    age: float | None
    cpu_idle: float | None


@dataclass(frozen=True, slots=True)
class Change:
    """A decision: run `to` processes instead of `frm`, because `reason`."""

    frm: int
    to: int
    reason: str

    def __str__(self) -> str:
        return f"scale {self.frm}→{self.to}: {self.reason}"


class Scaler:
    """Turns samples into changes of the process count, within the policy's bounds.

    Pure: it is told the time and the current count, so tests drive it directly.

    Example:
        scaler = Scaler(ScalePolicy(1, 4), now=0.0)
        scaler.decide(Sample(age=4.2, cpu_idle=0.63), now=2.0, processes=1)
        # Change(1, 2, "oldest ready job 4.2 s old > 1.0 s, CPU idle 63%")
    """

    def __init__(self, policy: ScalePolicy, now: float) -> None:
        self.policy = policy
        self._last_change = now
        self._idle_since: float | None = now
        #: Why a wanted scale-up is not happening (CPU busy), or `None`.
        self.held: str | None = None

    def decide(self, sample: Sample, now: float, processes: int) -> Change | None:
        """The change to make now, if any (at most one per `interval`)."""
        p = self.policy
        if sample.age is None:
            if self._idle_since is None:
                self._idle_since = now
        else:
            self._idle_since = None
        self.held = None
        if processes < p.min:
            return None  # a dead process is being replaced; that is no scaling decision
        if now - self._last_change < p.interval:
            return None
        change = self._up(sample, processes) or self._down(now, processes)
        if change is not None:
            self._last_change = now
        return change

    def _up(self, sample: Sample, n: int) -> Change | None:
        p = self.policy
        if sample.age is None or sample.age <= p.target or n >= p.max:
            return None
        backlog = f"oldest ready job {sample.age:.1f} s old > {p.target:.1f} s"
        if sample.cpu_idle is None:
            return Change(n, n + 1, f"{backlog}, CPU idle unknown")
        if sample.cpu_idle < p.cpu_idle:
            self.held = f"{backlog}, but CPU idle {sample.cpu_idle:.0%} < {p.cpu_idle:.0%}"
            return None
        return Change(n, n + 1, f"{backlog}, CPU idle {sample.cpu_idle:.0%}")

    def _down(self, now: float, n: int) -> Change | None:
        p = self.policy
        if n <= p.min or self._idle_since is None or now - self._idle_since < p.idle:
            return None
        quiet = now - self._idle_since
        return Change(n, n - 1, f"no ready job for {quiet:.0f} s ≥ {p.idle:g} s")


class CpuMeter:
    """The machine's idle CPU share since the previous reading.

    Reads the first line of ``/proc/stat`` (idle + iowait over all time); where there is
    none (macOS), ``1 - loadavg / cores``.
    """

    def __init__(self, path: str | os.PathLike[str] = "/proc/stat") -> None:
        self._path = Path(path)
        self._last = self._times()

    def _times(self) -> tuple[int, int] | None:
        try:
            with open(self._path, encoding="ascii") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 5 or fields[0] != "cpu":
            return None
        try:
            ticks = [int(v) for v in fields[1:9]]  # user … steal; guest is inside user
        except ValueError:
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        return idle, sum(ticks)

    def idle(self) -> float | None:
        """Idle share (0..1) since the last call, `None` if it can't be told."""
        now, last = self._times(), self._last
        self._last = now
        if now is not None and last is not None:
            total = now[1] - last[1]
            if total > 0:
                return min(1.0, max(0.0, (now[0] - last[0]) / total))
            return None
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
        return max(0.0, 1.0 - load / (os.cpu_count() or 1))


def serving(app: App, queues: str | None) -> list[str]:
    """The queues a worker of `app` serves with ``--queues`` `queues` (as `App.worker`)."""
    if queues is None:
        declared = (t.defaults.queue or "default" for t in app.registry)
        return list(dict.fromkeys(["default", *declared]))
    return [name for name, _ in parse_queues(queues)]


async def oldest_ready_age(backend: Backend, queues: Sequence[str]) -> float | None:
    """Seconds the oldest ready job of `queues` has waited (store clock); `None` if none.

    One ``query`` of one job per queue, oldest by enqueue order (a retried job that is
    ready again counts from its new `run_at`). Paused queues are left out, and so are jobs
    of lanes with no capacity now (all slots taken, no token, circuit open): more processes
    would not run them sooner. A queue with such lanes reads up to `_SCAN` jobs to find
    one that could start.
    """
    paused = set(await backend.paused()) if isinstance(backend, QueueControl) else set()
    held = await _held_lanes(backend)
    oldest: float | None = None
    for queue in queues:
        if queue in paused:
            continue
        limit = _SCAN if any(q == queue for q, _ in held) else 1
        page = await backend.query(JobFilter(queue=queue, state=JobState.QUEUED), limit=limit)
        for job in page.jobs:
            if (job.queue, job.lane) in held:
                continue
            since = max(job.run_at, job.enqueued_at)
            oldest = since if oldest is None else min(oldest, since)
            break
    if oldest is None:
        return None
    return max(0.0, backend.clock.now() - oldest)


_SCAN = 200


async def _held_lanes(backend: Backend) -> set[tuple[str, str]]:
    """(queue, lane) of the lanes that can't start a job now."""
    if not isinstance(backend, FlowControl):
        return set()
    return {
        (info.queue, info.lane)
        for info in await backend.lanes()
        if info.circuit_state == "open"
        or (info.concurrency > 0 and info.running >= info.concurrency)
        or (info.rate > 0 and info.tokens < 1)
    }


def autoscale(
    app: App,
    queues: str | None,
    head: Sequence[str],
    argv: Sequence[str],
    policy: ScalePolicy,
    *,
    restart_delay: float = 0.5,
    max_restart_delay: float = 30.0,
) -> int:
    """Run ``conveyor [head] worker [argv]`` processes, as many as `policy` decides.

    Returns 0 when every process exited cleanly after a stop signal, 1 otherwise.
    """
    if app.url.partition(":")[0] == "memory":
        raise ConfigError(
            "--autoscale needs a store the processes share (sqlite:// or redis://); "
            "memory:// lives inside one process"
        )
    cmd = [sys.executable, "-m", "conveyor", *head, "worker", *argv, "--processes", "1"]
    names = serving(app, queues)
    pool = _Pool(cmd, restart_delay, max_restart_delay)
    try:
        return asyncio.run(_supervise(app, names, pool, policy))
    finally:
        pool.kill_all()


async def _supervise(app: App, queues: list[str], pool: _Pool, policy: ScalePolicy) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pool.stop)
    cpu = CpuMeter()
    scaler = Scaler(policy, time.monotonic())
    log.info(
        "autoscale %d:%d on queues %s: add above %.1f s of backlog with ≥ %.0f%% CPU idle, "
        "retire after %g s idle, one change per %g s",
        policy.min, policy.max, ",".join(queues), policy.target, policy.cpu_idle * 100,
        policy.idle, policy.interval,
    )  # fmt: skip
    try:
        for _ in range(policy.min):
            pool.spawn()
        next_look = time.monotonic() + policy.poll
        failing = False
        while not pool.done():
            pool.reap()
            now = time.monotonic()
            if not pool.stopping and now >= next_look:
                next_look = now + policy.poll
                try:
                    age = await oldest_ready_age(app.backend, queues)
                except ConveyorError as exc:
                    if not failing:
                        log.warning("autoscale: cannot read the backlog (%s); holding", exc)
                    failing = True
                    continue
                failing = False
                held = scaler.held
                change = scaler.decide(Sample(age, cpu.idle()), time.monotonic(), pool.size)
                if scaler.held and held is None:  # once per spell of busy CPU
                    log.info("autoscale: not adding a process: %s", scaler.held)
                if change is not None:
                    log.info("%s", change)
                    if change.to > change.frm:
                        pool.spawn()
                    else:
                        pool.retire()
            await asyncio.sleep(0.1)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await app.aclose()
    return 1 if pool.failures else 0


class _Pool:
    """The worker processes: active ones, retiring ones, and replacements of dead ones."""

    def __init__(self, cmd: list[str], restart_delay: float, max_restart_delay: float) -> None:
        self.cmd = cmd
        self.env = {**os.environ, "CONVEYOR_SUPERVISED": "1"}
        self.active: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.retiring: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: list[float] = []  # when each replacement of a dead process is due
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self._delay = restart_delay
        self.stopping = 0
        self.failures = 0

    @property
    def size(self) -> int:
        """Processes that count: active ones and the replacements on their way."""
        return len(self.active) + len(self.restarts)

    def spawn(self) -> None:
        # A session of its own, as in `supervise`: a terminal's Ctrl-C reaches only us.
        child = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        self.active[child.pid] = (child, time.monotonic())

    def retire(self) -> None:
        """SIGTERM the youngest active process: it finishes its jobs and exits."""
        if not self.active:
            return
        pid = max(self.active, key=lambda p: self.active[p][1])
        child, _ = self.active.pop(pid)
        child.send_signal(signal.SIGTERM)
        self.retiring[pid] = child

    def stop(self) -> None:
        """A stop signal: forward one SIGTERM to every process (a second one hurries them)."""
        self.stopping += 1
        self.restarts.clear()
        for child in [c for c, _ in self.active.values()] + list(self.retiring.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        """Collect exited processes; schedule replacements for ones that died."""
        now = time.monotonic()
        for pid, child in list(self.retiring.items()):
            code = child.poll()
            if code is not None:
                del self.retiring[pid]
                if code not in (0, -signal.SIGTERM):
                    self.failures += not self.stopping
                    log.warning("retired worker process %d exited with %s", pid, code)
                else:
                    log.info("worker process %d retired", pid)
        for pid, (child, started) in list(self.active.items()):
            code = child.poll()
            if code is None:
                continue
            del self.active[pid]
            if self.stopping:
                self.failures += code not in (0, -signal.SIGTERM)
                continue
            lived = now - started
            self._delay = (
                self.restart_delay if lived > 10 else min(self.max_restart_delay, self._delay * 2)
            )
            log.warning(
                "worker process %d exited with %s after %.1fs; replacing it in %.1fs",
                pid, code, lived, self._delay,
            )  # fmt: skip
            self.restarts.append(now + self._delay)
        if not self.stopping:
            due = [t for t in self.restarts if t <= now]
            self.restarts = [t for t in self.restarts if t > now]
            for _ in due:
                self.spawn()

    def done(self) -> bool:
        return bool(self.stopping) and not self.active and not self.retiring

    def kill_all(self) -> None:
        for child in [c for c, _ in self.active.values()] + list(self.retiring.values()):
            if child.poll() is None:
                child.kill()
