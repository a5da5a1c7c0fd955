"""Periodic jobs: the scheduler service that enqueues every schedule's fires, ahead of time.

**One job per fire time, with no leader.** Each fire is a job with the unique key
``sched:<name>:<fire epoch>`` and an id derived from it (`schedules.fire_id`), enqueued
*ahead* as a delayed job (``run_at`` = the fire time) so the ordinary delayed-job path
(promotion in claim, the Redis handoff) starts it on time. Every worker runs a `Scheduler`;
they all compute the same fire times and the store keeps one job per key (and per id), so any
number of schedulers make one job per fire. The key stays held after the job ends
(``unique_until`` = fire + `misfire_grace` + `schedules.RETAIN`) for as long as any
scheduler might still look back at that fire; the id keeps a cancelled fire cancelled.

**Each tick** (every `tick` seconds, on the injected clock) the scheduler enqueues, in one
`Backend.enqueue` call for all schedules, every fire up to ``now + lookahead`` that it has
not enqueued yet. The lookahead is the worker's idle `poll` + 1 s, so an idle worker's wait
already knows of a fire before it is due (a Redis enqueue of a delayed job wakes no waiting
worker; their next wait sleeps exactly until it).

**Misfires** are fires that passed while no scheduler enqueued them (every worker was down,
or this loop stalled). "Missed" means after the newest fire the store knows of: when a
scheduler first sees a schedule it looks the fires of the grace window up by id (a few
batched `get` calls for all schedules, see `Scheduler._newest_known`); a schedule the store
knows nothing of has missed nothing (a new schedule does not fire at once). ``catch_up``:
``"latest"`` (default) the most recent missed fire within `misfire_grace`; ``"all"`` every
missed fire within it (at most `MAX_CATCH_UP`); ``"none"`` only future fires. Fires another
scheduler enqueued meanwhile are duplicates the store skips.

**overlap=False** enqueues a schedule's next fire only once its previous fire job has
ended, so a fire that comes while the previous run is live is skipped (one `get` per tick
for all such schedules; at start, the newest known fire's job is the previous run).

**Removed schedules**: when a scheduler starts it cancels the pending (``scheduled``) fire
jobs, in the queues its worker serves, of schedules its app no longer registers (a worker
serving a queue runs what is in it, so a fire job there that its app does not schedule can
only be a leftover of a removed schedule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.backends.base import Backend, JobFilter
from conveyor.clock import Clock
from conveyor.errors import BackendError
from conveyor.job import TERMINAL, Job, JobState
from conveyor.scheduler.schedules import (
    KEY_PREFIX,
    MAX_CATCH_UP,
    Schedule,
    Schedules,
    fire_id,
)
from conveyor.worker.service import Service

__all__ = ["Scheduler", "SchedulerStats"]

log = logging.getLogger("conveyor.scheduler")


@dataclass(slots=True)
class SchedulerStats:
    """What the scheduler did since it started."""

    ticks: int = 0
    sent: int = 0  # fire jobs sent to the store (duplicates included)
    store_calls: int = 0
    removed: int = 0  # pending fire jobs of removed schedules cancelled at start
    errors: int = 0


@dataclass(slots=True)
class _State:
    since: float  # fires after this one count as missed (the newest fire the store knew of)
    ahead: float | None = None  # the latest fire this scheduler enqueued
    last_id: str | None = None  # that fire's job (for overlap=False)


class Scheduler(Service):
    """Enqueues every schedule's fires ahead of time, as a worker service.

    Args:
        backend: the store.
        schedules: the app's schedules.
        clock: the time source (ticks sleep on it).
        tick: seconds between ticks.
        lookahead: how far ahead of now fires are enqueued (default: `tick` + 1 s; at
            least the worker's idle poll, see the module docstring).
        queues: the queues the worker serves (for the clean-up of removed schedules at
            start; `None`: no clean-up).
    """

    name = "scheduler"

    def __init__(
        self,
        backend: Backend,
        schedules: Schedules,
        clock: Clock,
        *,
        tick: float = 1.0,
        lookahead: float | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.schedules = schedules
        self.clock = clock
        self.tick_every = tick
        self.lookahead = max(tick, lookahead if lookahead is not None else tick + 1.0)
        self.queues = list(queues) if queues is not None else None
        self.stats = SchedulerStats()
        self._state: dict[str, _State] = {}

    async def run(self) -> None:
        """Clean up after removed schedules, then tick until stopped."""
        self.started()
        await self.cancel_on_stop(self._loop())

    async def _loop(self) -> None:
        failing = False
        if self.queues is not None:
            try:
                await self.cancel_removed(self.queues)
            except BackendError as exc:
                log.error("scheduler: could not cancel removed schedules' fires (%s)", exc)
        while True:
            try:
                await self.tick()
            except BackendError as exc:
                self.stats.errors += 1
                if not failing:
                    log.error("scheduler tick failed (%s); retrying every %.1fs", exc,
                              self.tick_every)  # fmt: skip
                failing = True
            except Exception:
                self.stats.errors += 1
                log.exception("scheduler tick failed; retrying in %.1fs", self.tick_every)
            else:
                if failing:
                    log.warning("scheduler: the store answers again")
                failing = False
            await self.clock.sleep(self.tick_every)

    async def tick(self) -> int:
        """One pass: enqueue every due-soon fire of every schedule in one store call.
        Returns how many fire jobs were sent (duplicates included)."""
        now = self.clock.now()
        self.stats.ticks += 1
        horizon = now + self.lookahead
        states = self._state
        new = [s for s in self.schedules if s.name not in states]
        if new:
            states.update(await self._first_states(new, now))
        previous = await self._previous(now)
        owners: list[_State] = []
        jobs: list[Job] = []
        for s in self.schedules:
            st = states[s.name]
            if st.ahead is not None and st.ahead >= horizon:
                continue  # its next fire is in the store already
            if s.overlap:
                fires = self._fires(s, st, now, horizon)
            elif s.name in previous:
                fires = self._fire_no_overlap(s, st, now, previous[s.name])
            else:
                continue  # its previous fire has not passed yet
            if fires:
                st.ahead = fires[-1] if st.ahead is None else max(fires[-1], st.ahead)
                jobs += s.jobs(fires, now)
                owners += [st] * len(fires)
        if not jobs:
            return 0
        self.stats.store_calls += 1
        ids = await self.backend.enqueue(jobs)
        for st, got in zip(owners, ids, strict=True):
            st.last_id = got  # the last fire's job: the holder of its key
        self.stats.sent += len(jobs)
        return len(jobs)

    def _fires(self, s: Schedule, st: _State, now: float, horizon: float) -> list[float]:
        """Missed fires to catch up on (by `catch_up`), then every fire up to `horizon`
        (at least the next one)."""
        expr = s.expression
        since = max(st.since if st.ahead is None else st.ahead, now - s.misfire_grace)
        past: list[float] = []
        if s.catch_up == "latest":
            prev = expr.prev_at_or_before(now, limit=since)
            past = [prev] if prev is not None else []
        elif s.catch_up == "all":
            past = expr.fires_between(since, now, cap=MAX_CATCH_UP)
        start = now if st.ahead is None else max(now, st.ahead)
        ahead = expr.fires_between(start, horizon, cap=MAX_CATCH_UP)
        return past + (ahead or [expr.next_after(start)])

    def _fire_no_overlap(
        self, s: Schedule, st: _State, now: float, ended: float | None
    ) -> list[float]:
        """overlap=False, the previous run not live (it ended at `ended`; `None`: no run
        known): one fire, the latest that passed since then (within the grace, unless
        ``catch_up="none"``; fires while it ran are skipped), else the next one, ahead."""
        expr = s.expression
        since = max(ended or 0.0, st.ahead or 0.0, st.since, now - s.misfire_grace)
        prev = expr.prev_at_or_before(now, limit=since)
        return [prev if prev is not None else expr.next_after(now)]

    async def _first_states(self, schedules: list[Schedule], now: float) -> dict[str, _State]:
        """What the store knows of each schedule when this scheduler first sees it: the
        newest fire whose job exists, so only fires after it count as missed (a schedule
        the store knows nothing of has missed nothing), and for overlap=False that fire's
        job (maybe still live)."""
        out = {s.name: _State(since=now) for s in schedules}
        asked = [s for s in schedules if s.catch_up != "none" or not s.overlap]
        for s, (fire, job) in (await self._newest_known(asked, now)).items():
            since = now if s.catch_up == "none" else fire
            if s.overlap:
                out[s.name] = _State(since=since)
            else:
                out[s.name] = _State(since=since, ahead=fire, last_id=job.id)
        return out

    async def _newest_known(
        self, schedules: list[Schedule], now: float
    ) -> dict[Schedule, tuple[float, Job]]:
        """Per schedule, the newest fire in its grace window (or the one just before it)
        whose job the store has, looked up by the fires' job ids, one `get` per round for
        every schedule. First probes back from the newest fire by 0, 1, 2, 4, 8, ... fires
        (the store knows a run of fires that ends where an outage began), then a bisection
        between the newest hit and the miss above it: one round when nothing was missed,
        about 1 + log2(fires missed) rounds otherwise. A run of known fires shorter than the
        gap between two probes can be missed; then the schedule counts as new."""
        fires: dict[Schedule, list[float]] = {}
        for s in schedules:
            expr = s.expression
            window = expr.fires_between(now - s.misfire_grace, now, cap=4096)
            before = expr.prev_at_or_before(now - s.misfire_grace, limit=0.0)
            if before is not None:
                window.insert(0, before)
            if window:
                fires[s] = window

        async def lookup(asks: list[tuple[Schedule, int]]) -> list[Job | None]:
            self.stats.store_calls += 1
            return await self.backend.get([fire_id(s.name, fires[s][i]) for s, i in asks])

        probes: list[tuple[Schedule, int]] = []
        for s, window in fires.items():
            top, step, seen = len(window) - 1, 1, set()
            i = top
            while i not in seen:
                seen.add(i)
                probes.append((s, i))
                i, step = max(0, top - step), step * 2
        bounds: dict[Schedule, list[int]] = {}  # [lo, hi]: the newest known is in there
        best: dict[Schedule, tuple[float, Job]] = {}
        above: dict[Schedule, int] = {}  # the lowest probed miss above the newest hit
        for (s, i), job in zip(probes, await lookup(probes) if probes else [], strict=True):
            if s in bounds:
                continue
            if job is None:
                above[s] = i
            else:
                best[s] = (fires[s][i], job)
                bounds[s] = [i, above.get(s, len(fires[s])) - 1]
        while True:
            asks = [(s, (lo + hi + 1) // 2) for s, (lo, hi) in bounds.items() if lo < hi]
            if not asks:
                return best
            for (s, mid), job in zip(asks, await lookup(asks), strict=True):
                if job is not None:
                    best[s] = (fires[s][mid], job)
                    bounds[s][0] = mid
                else:
                    bounds[s][1] = mid - 1

    async def _previous(self, now: float) -> dict[str, float | None]:
        """For overlap=False schedules with no fire pending ahead: whether their previous run
        ended, and when. Schedules whose run is live are left out; the value is when the run
        ended (`None` when no run is known). One `get` for all, once per tick."""
        out: dict[str, float | None] = {}
        known: list[tuple[Schedule, str]] = []
        for s in self.schedules:
            st = self._state[s.name]
            if s.overlap or (st.ahead is not None and st.ahead > now):
                continue
            if st.last_id is None:
                out[s.name] = None
            else:
                known.append((s, st.last_id))
        if known:
            self.stats.store_calls += 1
            found = await self.backend.get([i for _, i in known])
            for (s, _), job in zip(known, found, strict=True):
                if job is None or job.state in TERMINAL:
                    out[s.name] = job.finished_at if job is not None else None
        return out

    async def cancel_removed(self, queues: Sequence[str]) -> int:
        """Cancel pending fire jobs in `queues` whose schedule is no longer registered."""
        n = 0
        for queue in queues:
            after: str | None = None
            while True:
                self.stats.store_calls += 1
                page = await self.backend.query(
                    JobFilter(queue=queue, state=JobState.SCHEDULED), after, 1000
                )
                for job in page.jobs:
                    name = job.meta.get("schedule")
                    if (
                        job.key is not None
                        and job.key.startswith(KEY_PREFIX)
                        and isinstance(name, str)
                        and name not in self.schedules
                    ):
                        self.stats.store_calls += 1
                        reason = f"schedule {name!r} is no longer registered"
                        n += await self.backend.cancel(job.id, reason) is JobState.CANCELLED
                after = page.next
                if after is None:
                    break
        if n:
            log.warning("cancelled %d pending fire job(s) of removed schedules", n)
        self.stats.removed += n
        return n
