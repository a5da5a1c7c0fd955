"""Periodic jobs: expressions and their errors, fire times across DST and leap days, one job
per fire with several schedulers, one store call per tick, misfires, overlap, removal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import conveyor
from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.errors import ConfigError, InvalidSchedule
from conveyor.job import Completed, JobState
from conveyor.scheduler import Scheduler
from conveyor.scheduler.cron import parse_expression
from conveyor.scheduler.schedules import fire_id, fire_key


def _t(zone: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[conveyor.App]:
    clock = conveyor.FakeClock(datetime(2026, 1, 5, 12, 0, 0, 250_000, tzinfo=UTC).timestamp())
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    application = conveyor.App(url, clock=clock)
    yield application
    await application.aclose()


def _clock(app: conveyor.App) -> conveyor.FakeClock:
    assert isinstance(app.clock, conveyor.FakeClock)
    return app.clock


async def _jobs(backend: Backend) -> list[conveyor.Job]:
    page = await backend.query(JobFilter(), None, 10_000)
    return page.jobs


def _count_calls(backend: Backend, op: str) -> list[int]:
    calls: list[int] = []
    real = getattr(backend, op)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return await real(*args, **kwargs)

    setattr(backend, op, counted)
    return calls


# -- expressions and bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", "hour 25 is out of range 0-23"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("61 0 0 * * *", "second 61 is out of range 0-59"),
        ("x * * * *", "minute field 'x' is not valid"),
        ("0 0 * FOO *", "month field 'FOO' is not valid"),
        ("*/0 * * * *", "minute field '*/0' is not valid"),
        ("* * * *", "has 4 field(s); give 5"),
        ("* * * * * * *", "has 7 field(s)"),
        ("@fortnightly", "unknown schedule alias '@fortnightly'"),
        ("@every 0s", "must be a positive duration"),
        ("@every -5s", "is not a duration"),
        ("@every soon", "is not a duration"),
        ("@every", "is not a duration"),
    ],
)
def test_bad_expressions_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        parse_expression(expr)
    assert message in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_aliases_and_every() -> None:
    t = datetime(2026, 1, 5, 12, 10, tzinfo=UTC).timestamp()
    assert parse_expression("@hourly").next_after(t) == t + 50 * 60
    assert parse_expression("@daily").next_after(t) == t + 11 * 3600 + 50 * 60
    weekly = parse_expression("@weekly").next_after(t)  # Sunday midnight
    assert datetime.fromtimestamp(weekly, UTC) == datetime(2026, 1, 11, tzinfo=UTC)
    assert parse_expression("@every 1h30m").next_after(5399.5) == 5400.0
    assert parse_expression("@every 90s").next_after(90.0) == 180.0
    assert parse_expression("@every 250ms").next_after(1.0) == 1.25
    assert parse_expression("*/5 * * * * *").next_after(100.5) == 105.0  # 6 fields: seconds


async def test_registration_errors_write_nothing(app: conveyor.App) -> None:
    @app.task
    async def job(kind: str) -> None: ...

    other = conveyor.App("memory://")

    @other.task
    async def foreign() -> None: ...

    bad: list[tuple[Callable[[], object], str]] = [
        (lambda: app.schedule(job, "0 25 * * *", args=("x",)), "hour 25 is out of range 0-23"),
        (lambda: app.schedule(job, "@daily", tz="Mars/Olympus", args=("x",)), "unknown time zone"),
        (lambda: app.schedule(job, "@every 0s", args=("x",)), "positive duration"),
        (lambda: app.schedule(foreign, "@daily"), "not a task registered with this app"),
        (lambda: app.schedule(job, "@daily", args=(1, 2)), "schedule 'job'"),
        (lambda: app.schedule(job, "@daily", name="bad name!", args=("x",)), "schedule name"),
        (lambda: app.schedule(job, "@daily", args=("x",), queue="no spaces"), "queue name"),
        (lambda: app.schedule(job, "@daily", args=("x",), catch_up="some"), "catch_up"),  # type: ignore[arg-type]
        (lambda: app.schedule(job, "@daily", args=("x",), misfire_grace=-1), "misfire_grace"),
    ]
    for call, message in bad:
        with pytest.raises(InvalidSchedule, match=message):
            call()
    assert len(app.schedules) == 0
    app.schedule(job, "@daily", args=("a",))
    with pytest.raises(InvalidSchedule, match="already registered"):
        app.schedule(job, "@hourly", args=("b",))
    with pytest.raises(InvalidSchedule, match="hour 25"):

        @app.periodic("0 25 * * *")
        async def never() -> None: ...

    assert [s.name for s in app.schedules] == ["job"]
    assert await _jobs(app.backend) == []
    await other.aclose()


# -- fire times: DST and leap days, through the scheduler on a FakeClock ----------------------


async def _fires_over(
    app: conveyor.App, expr: str, tz: str, start: float, hours: int
) -> list[datetime]:
    @app.task
    async def tick() -> None: ...

    app.schedule(tick, expr, tz=tz, catch_up="none")
    clock = _clock(app)
    clock.set(start)
    scheduler = Scheduler(app.backend, app.schedules, clock)
    for _ in range(hours * 4):
        await scheduler.tick()
        clock.advance(900)
    jobs = await _jobs(app.backend)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    passed = [j.run_at for j in jobs if j.run_at <= clock.now()]  # not the next one, ahead
    return sorted(datetime.fromtimestamp(t, ZoneInfo(tz)) for t in passed)


@pytest.mark.parametrize(
    ("tz", "spring", "fall"),
    [
        ("Europe/Berlin", (2026, 3, 29), (2026, 10, 25)),
        ("America/New_York", (2026, 3, 8), (2026, 11, 1)),
    ],
)
async def test_dst_skipped_time_fires_once_after(
    app: conveyor.App, tz: str, spring: tuple[int, int, int], fall: tuple[int, int, int]
) -> None:
    fires = await _fires_over(app, "30 2 * * *", tz, _t(tz, *spring) - 86_400, 72)
    day = [f for f in fires if f.date() == datetime(*spring).date()]
    assert len(day) == 1 and (day[0].hour, day[0].minute) == (3, 0)  # the gap: 02:30 is skipped
    assert [f.day for f in fires] == [spring[2] - 1, spring[2], spring[2] + 1]


@pytest.mark.parametrize(
    ("tz", "fall", "hour"),
    [("Europe/Berlin", (2026, 10, 25), 2), ("America/New_York", (2026, 11, 1), 1)],
)
async def test_dst_repeated_time_fires_once(
    app: conveyor.App, tz: str, fall: tuple[int, int, int], hour: int
) -> None:
    fires = await _fires_over(app, f"30 {hour} * * *", tz, _t(tz, *fall) - 86_400, 72)
    day = [f for f in fires if f.date() == datetime(*fall).date()]
    assert len(day) == 1 and (day[0].hour, day[0].minute, day[0].fold) == (hour, 30, 0)
    assert len(fires) == 3
    assert fires[2] - fires[1] == (fires[1] - fires[0])  # wall-clock daily, not every 24 h


async def test_leap_day(app: conveyor.App) -> None:
    fires = await _fires_over(app, "0 12 * * *", "UTC", _t("UTC", 2028, 2, 27, 13), 72)
    assert [f.day for f in fires] == [28, 29, 1]
    e = parse_expression("0 0 29 2 *")
    assert datetime.fromtimestamp(e.next_after(_t("UTC", 2026, 3, 1)), UTC).year == 2028


# -- one job per fire, one store call per tick ------------------------------------------------


async def test_several_schedulers_make_one_job_per_fire(app: conveyor.App) -> None:
    @app.task
    async def ping(who: str) -> None: ...

    app.schedule(ping, "@every 1s", args=("ops",), name="ops-ping")
    clock = _clock(app)
    schedulers = [Scheduler(app.backend, app.schedules, clock) for _ in range(3)]
    start = clock.now()
    for _ in range(10):
        for s in schedulers:
            await s.tick()
        clock.advance(0.37)
    jobs = await _jobs(app.backend)
    fires = sorted(j.run_at for j in jobs)
    assert len(fires) == len(set(fires)) == len({j.key for j in jobs})
    assert fires == [float(t) for t in range(int(start) + 1, int(start) + 1 + len(fires))]
    assert fires[-1] >= clock.now() + 1  # enqueued ahead
    job = jobs[0]
    assert job.key == fire_key("ops-ping", job.run_at) == f"sched:ops-ping:{int(job.run_at)}"
    assert job.state is JobState.SCHEDULED and job.meta["schedule"] == "ops-ping"
    assert job.unique_until is not None and job.unique_until >= job.run_at + 300
    assert all(j.id == fire_id("ops-ping", j.run_at) for j in jobs)


async def test_one_enqueue_per_tick_for_1000_schedules(app: conveyor.App) -> None:
    @app.task
    async def work(n: int) -> None: ...

    for n in range(1000):
        app.schedule(work, "@every 1s" if n % 2 else f"{n % 60} * * * *", args=(n,), name=f"s{n}")
    calls = _count_calls(app.backend, "enqueue")
    scheduler = Scheduler(app.backend, app.schedules, _clock(app))
    await scheduler.tick()  # the first tick also looks up what the store knows of each
    assert len(calls) == 1 and calls[0] >= 1000
    first = scheduler.stats.store_calls
    for _ in range(5):
        _clock(app).advance(1.0)
        before = len(calls)
        await scheduler.tick()
        assert len(calls) - before == 1
    assert scheduler.stats.store_calls == first + 5


async def test_a_duplicate_fire_is_not_stored_again_after_it_ran(app: conveyor.App) -> None:
    @app.task
    async def ping() -> None: ...

    app.schedule(ping, "@every 10s")
    clock = _clock(app)
    await Scheduler(app.backend, app.schedules, clock, lookahead=1.0).tick()
    (job,) = await _jobs(app.backend)
    clock.set(job.run_at)
    (lease,) = await app.backend.claim(ClaimRequest(["default"], 1, 5.0, "w"))
    await app.backend.settle([(lease, Completed(b"null"))])
    clock.advance(30)
    # A scheduler starting late looks back over the grace: the fire that ran is a duplicate.
    late = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    await late.tick()
    jobs = await _jobs(app.backend)
    assert len({j.key for j in jobs}) == len(jobs)
    assert sum(1 for j in jobs if j.run_at == job.run_at) == 1


# -- misfires ----------------------------------------------------------------------------------


@pytest.mark.parametrize("catch_up", ["latest", "all", "none"])
async def test_misfires(app: conveyor.App, catch_up: str) -> None:
    @app.task
    async def ping() -> None: ...

    app.schedule(ping, "@every 10s", catch_up=catch_up, misfire_grace=200)  # type: ignore[arg-type]
    clock = _clock(app)
    first = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    await first.tick()
    assert len(await _jobs(app.backend)) == 1  # a schedule the store knew nothing of missed nothing
    for _ in range(60):
        clock.advance(1.0)
        await first.tick()
    ahead = max(await _jobs(app.backend), key=lambda j: j.run_at)
    clock.advance(120)  # no scheduler ran: the fire enqueued ahead still waits in the store
    now = clock.now()
    await Scheduler(app.backend, app.schedules, clock, lookahead=1.0).tick()
    jobs = await _jobs(app.backend)
    missed = sorted(j.run_at for j in jobs if ahead.run_at < j.run_at <= now)
    every = list(range(int(ahead.run_at) + 10, int(now) + 1, 10))
    assert missed == {"latest": every[-1:], "all": every, "none": []}[catch_up]
    assert sum(1 for j in jobs if j.run_at > now) == 1  # and the next one, ahead


async def test_misfires_outside_the_grace_are_dropped(app: conveyor.App) -> None:
    @app.task
    async def ping() -> None: ...

    app.schedule(ping, "@every 10s", catch_up="all", misfire_grace=30)
    clock = _clock(app)
    await Scheduler(app.backend, app.schedules, clock, lookahead=1.0).tick()
    (ahead,) = await _jobs(app.backend)
    clock.set(ahead.run_at + 35)  # the fire before the window is known: 3 missed within 30 s
    now = clock.now()
    await Scheduler(app.backend, app.schedules, clock, lookahead=1.0).tick()
    missed = sorted(j.run_at for j in await _jobs(app.backend) if ahead.run_at < j.run_at <= now)
    assert missed == [ahead.run_at + 10, ahead.run_at + 20, ahead.run_at + 30]


async def test_catch_up_all_is_capped(app: conveyor.App) -> None:
    @app.task
    async def ping() -> None: ...

    app.schedule(ping, "@every 1s", catch_up="all", misfire_grace=1000)
    clock = _clock(app)
    first = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    for _ in range(200):
        await first.tick()
        clock.advance(1.0)
    known = len(await _jobs(app.backend))
    clock.advance(500)
    late = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    await late.tick()
    assert len(await _jobs(app.backend)) == known + 100 + 1  # 100 of the missed + 1 ahead
    assert late.stats.store_calls <= 25  # the newest known fire: probes, then a bisection


# -- overlap=False ---------------------------------------------------------------------------


async def test_no_overlap_skips_fires_while_the_previous_run_is_live(app: conveyor.App) -> None:
    @app.task
    async def slow() -> None: ...

    app.schedule(slow, "@every 10s", overlap=False)
    clock = _clock(app)
    scheduler = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    await scheduler.tick()
    (first,) = await _jobs(app.backend)
    clock.set(first.run_at + 0.1)
    (lease,) = await app.backend.claim(ClaimRequest(["default"], 1, 60.0, "w"))
    for _ in range(25):  # 25 s of ticks while it runs: fires at +10 s and +20 s are skipped
        await scheduler.tick()
        clock.advance(1.0)
    assert len(await _jobs(app.backend)) == 1
    # Another scheduler starting now also sees the live run (by its fire's key).
    other = Scheduler(app.backend, app.schedules, clock, lookahead=1.0)
    await other.tick()
    assert len(await _jobs(app.backend)) == 1
    await app.backend.settle([(lease, Completed(b"null"))])
    await scheduler.tick()
    await other.tick()
    jobs = await _jobs(app.backend)
    assert len(jobs) == 2
    assert jobs[1].run_at > clock.now()  # the next fire, ahead; none of the skipped ones


# -- removal and visibility -------------------------------------------------------------------


async def test_removed_schedule_pending_fire_is_cancelled_at_start(app: conveyor.App) -> None:
    @app.task
    async def old() -> None: ...

    @app.task
    async def kept() -> None: ...

    app.schedule(old, "@hourly")
    app.schedule(kept, "@hourly")
    clock = _clock(app)
    await Scheduler(app.backend, app.schedules, clock).tick()
    assert len(await _jobs(app.backend)) == 2
    # Next deploy: `old` is no longer scheduled (same store, same queues).
    deployed = conveyor.App(backend=app.backend)

    @deployed.task
    async def kept() -> None: ...

    deployed.schedule(kept, "@hourly")
    scheduler = Scheduler(deployed.backend, deployed.schedules, clock, queues=["default"])
    assert await scheduler.cancel_removed(["default"]) == 1
    states = {j.meta["schedule"]: j.state for j in await _jobs(app.backend)}
    assert states == {"old": JobState.CANCELLED, "kept": JobState.SCHEDULED}


async def test_pending_fire_is_visible_and_cancellable(app: conveyor.App) -> None:
    @app.task
    async def report(kind: str) -> None: ...

    app.schedule(report, "0 9 * * MON", tz="Europe/Berlin", args=("weekly",), queue="reports")
    await Scheduler(app.backend, app.schedules, _clock(app)).tick()
    nxt = app.schedules.get("report")
    assert nxt is not None
    fire = nxt.expression.next_after(_clock(app).now())
    page = await app.backend.query(JobFilter(key=fire_key("report", fire)))
    (job,) = page.jobs
    assert job.queue == "reports" and job.state is JobState.SCHEDULED
    assert datetime.fromtimestamp(job.run_at, ZoneInfo("Europe/Berlin")).hour == 9
    assert await app.backend.cancel(job.id) is JobState.CANCELLED
    # A scheduler (re)starting sends that fire again: the store keeps the cancelled record.
    await Scheduler(app.backend, app.schedules, _clock(app)).tick()
    (again,) = (await app.backend.query(JobFilter(key=fire_key("report", fire)))).jobs
    assert again.id == job.id and again.state is JobState.CANCELLED


# -- the worker service --------------------------------------------------------------------------


async def test_worker_runs_the_scheduler_unless_disabled(app: conveyor.App) -> None:
    @app.periodic("@every 1s")
    async def beat() -> None: ...

    assert app.worker().scheduler is not None
    assert app.worker().services[-1].name == "scheduler"
    assert app.worker(scheduler=False).scheduler is None
    assert all(s.name != "scheduler" for s in app.worker(scheduler=False).services)


async def test_fires_run_on_a_real_worker() -> None:
    app = conveyor.App("memory://")
    ran: list[float] = []

    @app.periodic("@every 100ms")
    async def beat() -> None:
        ran.append(app.clock.now())

    async with app, app.worker(poll=0.05):
        while len(ran) < 4:
            await asyncio.sleep(0.02)
    assert len(ran) >= 4


async def test_a_schedule_of_a_limited_task_fires_jobs_in_its_lane(app: conveyor.App) -> None:
    @app.task(concurrency=1, limit_key="{account}")
    async def sync(account: int) -> None: ...

    schedule = app.schedule(sync, "@every 1m", args=(7,))
    (job,) = schedule.jobs([1000.0], 1000.0)
    assert (job.lane, job.concurrency) == ("sync:7", 1)
    with pytest.raises(InvalidSchedule, match="Expected `int`"):
        app.schedule(sync, "@every 1m", name="bad", args=(1.5,))
    assert app.schedules.get("bad") is None
