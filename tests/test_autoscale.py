"""`conveyor worker --autoscale MIN:MAX`: the decision, the measurements, the CLI's bad inputs,
and real processes (on a SQLite file, and on Redis) scaling up under a burst and back down
when idle, with every job completed once."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

import conveyor
from conveyor.backends.base import ClaimRequest, JobFilter
from conveyor.backends.memory import MemoryBackend
from conveyor.cli import cli
from conveyor.cli.autoscale import (
    Change,
    CpuMeter,
    Sample,
    ScalePolicy,
    Scaler,
    oldest_ready_age,
    parse_range,
    serving,
)
from conveyor.errors import ConfigError
from conveyor.testing.contract import make_job
from tests.faults.conftest import Cluster, app_on, until
from tests.faults.conftest import cluster as cluster  # the fixture, shared with the fault tests

# -- the decision ----------------------------------------------------------------------------

POLICY = ScalePolicy(1, 3, target=1.0, idle=30.0, interval=2.0, cpu_idle=0.2)
BUSY = Sample(age=4.2, cpu_idle=0.63)
IDLE = Sample(age=None, cpu_idle=0.9)


def test_a_backlog_with_idle_cpu_adds_one_process_per_interval() -> None:
    scaler = Scaler(POLICY, now=0.0)
    assert scaler.decide(BUSY, now=1.0, processes=1) is None  # not within the first interval
    change = scaler.decide(BUSY, now=2.0, processes=1)
    assert change == Change(1, 2, "oldest ready job 4.2 s old > 1.0 s, CPU idle 63%")
    assert str(change) == "scale 1→2: oldest ready job 4.2 s old > 1.0 s, CPU idle 63%"
    assert scaler.decide(BUSY, now=3.9, processes=2) is None  # hysteresis
    assert scaler.decide(BUSY, now=4.0, processes=2) == Change(2, 3, change.reason)
    assert scaler.decide(BUSY, now=100.0, processes=3) is None  # never above MAX


def test_a_young_backlog_or_busy_cpu_adds_nothing() -> None:
    scaler = Scaler(POLICY, now=0.0)
    assert scaler.decide(Sample(age=1.0, cpu_idle=0.9), now=5.0, processes=1) is None
    assert scaler.decide(Sample(age=3.0, cpu_idle=0.05), now=6.0, processes=1) is None
    assert scaler.held == "oldest ready job 3.0 s old > 1.0 s, but CPU idle 5% < 20%"
    unknown = scaler.decide(Sample(age=3.0, cpu_idle=None), now=7.0, processes=1)
    assert unknown is not None and unknown.reason.endswith("CPU idle unknown")
    no_gate = Scaler(ScalePolicy(1, 3, cpu_idle=0.0), now=0.0)
    assert no_gate.decide(Sample(age=3.0, cpu_idle=0.0), now=5.0, processes=1) is not None


def test_idle_retires_one_process_per_interval_down_to_min() -> None:
    scaler = Scaler(POLICY, now=0.0)
    assert scaler.decide(BUSY, now=10.0, processes=3) is None  # at MAX already
    assert scaler.decide(IDLE, now=11.0, processes=3) is None  # idle starts now
    assert scaler.decide(IDLE, now=40.9, processes=3) is None
    assert scaler.decide(IDLE, now=41.0, processes=3) == Change(
        3, 2, "no ready job for 30 s ≥ 30 s"
    )
    assert scaler.decide(IDLE, now=42.0, processes=2) is None  # one change per interval
    assert scaler.decide(IDLE, now=43.0, processes=2) == Change(
        2, 1, "no ready job for 32 s ≥ 30 s"
    )
    assert scaler.decide(IDLE, now=1000.0, processes=1) is None  # never below MIN


def test_a_ready_job_restarts_the_idle_period() -> None:
    scaler = Scaler(POLICY, now=0.0)
    scaler.decide(IDLE, now=1.0, processes=2)
    scaler.decide(Sample(age=0.1, cpu_idle=0.5), now=25.0, processes=2)  # young: no scale-up
    assert scaler.decide(IDLE, now=31.0, processes=2) is None  # idle again from here
    assert scaler.decide(IDLE, now=60.9, processes=2) is None
    assert scaler.decide(IDLE, now=61.0, processes=2) == Change(
        2, 1, "no ready job for 30 s ≥ 30 s"
    )


def test_while_a_dead_process_is_replaced_nothing_is_decided() -> None:
    scaler = Scaler(ScalePolicy(2, 4), now=0.0)
    assert scaler.decide(BUSY, now=10.0, processes=1) is None
    assert scaler.decide(BUSY, now=10.0, processes=2) is not None


@pytest.mark.parametrize(
    ("spec", "expected"), [("1:8", (1, 8)), ("3:3", (3, 3)), (" 2 : 4 ", (2, 4))]
)
def test_parse_range(spec: str, expected: tuple[int, int]) -> None:
    assert parse_range(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("5:2", "'5:2': MIN 5 is above MAX 2"),
        ("0:3", "'0:3': MIN must be at least 1 process, got 0"),
        ("a:b", "'a:b' is not MIN:MAX with two whole numbers"),
        ("4", "'4' is not MIN:MAX"),
        ("1:2:3", "'1:2:3' is not MIN:MAX"),
        ("1.5:3", "'1.5:3' is not MIN:MAX"),
        ("1:1000", "'1:1000': MAX 1000 is above 256 processes"),
    ],
)
def test_parse_range_rejects(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_range(spec)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0}, "target must be > 0 seconds"),
        ({"idle": -1}, "idle must be > 0 seconds"),
        ({"interval": float("inf")}, "interval must be > 0 seconds"),
        ({"cpu_idle": 1.5}, "cpu_idle must be a share in 0..1"),
        ({"min": 3, "max": 2}, "1 <= MIN <= MAX <= 256, got 3:2"),
    ],
)
def test_policy_rejects(kwargs: dict[str, float], message: str) -> None:
    settings: dict[str, float] = {"min": 1, "max": 2, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ScalePolicy(**settings)  # type: ignore[arg-type]


# -- the measurements ------------------------------------------------------------------------


def test_cpu_meter_reads_idle_share_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    meter = CpuMeter(stat)
    stat.write_text("cpu  150 0 150 1000 100 0 0 0 0 0\n")  # +100 busy, +300 idle
    assert meter.idle() == pytest.approx(0.75)
    stat.write_text("cpu  250 0 150 1000 100 0 0 0 0 0\n")  # +100 busy, +0 idle
    assert meter.idle() == 0.0
    assert meter.idle() is None  # no time passed: nothing to tell


def test_cpu_meter_falls_back_to_the_load_average(tmp_path: Path) -> None:
    meter = CpuMeter(tmp_path / "missing")
    value = meter.idle()
    assert value is not None and 0.0 <= value <= 1.0
    real = CpuMeter()
    time.sleep(0.05)
    value = real.idle()
    assert value is None or 0.0 <= value <= 1.0


async def test_oldest_ready_age_on_the_store_clock(tmp_path: Path) -> None:
    clock = conveyor.FakeClock(start=1000.0)
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db", clock=clock)

    @app.task(queue="low")
    async def slow(n: int) -> None: ...

    @app.task
    async def fast(n: int) -> None: ...

    try:
        queues = serving(app, None)
        assert queues == ["default", "low"]
        assert serving(app, "critical=3,low") == ["critical", "low"]
        assert await oldest_ready_age(app.backend, queues) is None
        await slow.enqueue(1)
        clock.advance(2.0)
        await fast.enqueue(2)
        await slow.options(delay=100).enqueue(3)  # scheduled: not ready
        clock.advance(1.5)
        assert await oldest_ready_age(app.backend, queues) == pytest.approx(3.5)
        assert await oldest_ready_age(app.backend, ["default"]) == pytest.approx(1.5)
        await app.backend.pause("low")  # a paused queue's backlog is no reason to scale
        assert await oldest_ready_age(app.backend, queues) == pytest.approx(1.5)
        page = await app.backend.query(JobFilter(state=conveyor.JobState.QUEUED))
        assert len(page.jobs) == 2
    finally:
        await app.aclose()


async def test_oldest_ready_age_leaves_out_lanes_that_cannot_start_a_job() -> None:
    clock = conveyor.FakeClock(start=1000.0)
    backend = MemoryBackend(clock=clock)
    held = [make_job(clock, lane="one", concurrency=1) for _ in range(150)]
    await backend.enqueue(held)
    assert await oldest_ready_age(backend, ["default"]) == pytest.approx(0.0)
    await backend.claim(ClaimRequest(["default"], 1, 30.0, "w"))  # the lane's only slot
    clock.advance(5.0)
    assert await oldest_ready_age(backend, ["default"]) is None  # more processes: no help
    await backend.enqueue([make_job(clock)])
    clock.advance(2.0)
    assert await oldest_ready_age(backend, ["default"]) == pytest.approx(2.0)
    await backend.aclose()


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--autoscale", "5:2"], "Invalid value for --autoscale: '5:2': MIN 5 is above MAX 2"),
        (["--autoscale", "0:3"], "'0:3': MIN must be at least 1 process, got 0"),
        (["--autoscale", "a:b"], "Invalid value for --autoscale: 'a:b' is not MIN:MAX"),
        (["--autoscale", "1:4", "-p", "2"], "--autoscale and -p/--processes don't go together"),
        (["--autoscale", "1:4", "-p", "1"], "--autoscale and -p/--processes don't go together"),
        (["--autoscale", "1:4", "--burst"], "--autoscale and --burst don't go together"),
        (["--scale-target", "2"], "--scale-target needs --autoscale MIN:MAX"),
        (
            ["--autoscale", "1:4", "--scale-target", "0"],
            "Invalid value for --scale-target: autoscale target must be > 0 seconds",
        ),
        (
            ["--autoscale", "1:4", "--scale-cpu-idle", "2"],
            "Invalid value for --scale-cpu-idle: autoscale cpu_idle must be a share in 0..1",
        ),
        (["--autoscale", "1:4", "--scale-idle", "soon"], "'soon' is not a valid float"),
    ],
)
def test_bad_autoscale_options_are_click_errors_naming_the_problem(
    args: list[str], message: str
) -> None:
    # The options are checked before the app is imported (this module does not exist).
    result = CliRunner().invoke(cli, ["worker", "no_such_module:app", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_autoscale_refuses_a_store_that_lives_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "memapp.py").write_text("import conveyor\napp = conveyor.App('memory://')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["worker", "memapp:app", "--autoscale", "1:2"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "--autoscale needs a store the processes share" in str(result.exception)


# -- real processes --------------------------------------------------------------------------


def _workers(sup_pid: int) -> set[int]:
    """The supervisor's live worker processes."""
    try:
        kids = psutil.Process(sup_pid).children()
    except psutil.NoSuchProcess:
        return set()
    return {k.pid for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", ["sqlite", "redis"], indirect=True)
async def test_a_burst_scales_up_idle_scales_back_and_no_job_is_lost(cluster: Cluster) -> None:
    short, long = 800, 12
    total = short + long
    async with app_on(cluster) as app:
        sup = cluster.worker(
            "--autoscale", "1:3", "-c", "4", "--grace", "5",
            "--scale-target", "0.3", "--scale-idle", "1.5", "--scale-interval", "0.4",
            "--scale-cpu-idle", "0", "--no-scheduler",
            name="supervisor",
        )  # fmt: skip
        await until(lambda: len(_workers(sup.pid)) == 1, 20, "the first worker process")
        # 800 jobs of 30 ms (one process with 4 slots would need 6 s and more), then 12 of
        # 2.5 s: they are what runs once nothing is ready, so the first process to retire
        # has some of them to finish.
        calls = [(i, 0.03) for i in range(short)] + [(10_000 + i, 2.5) for i in range(long)]
        await app.registry.get("asleep").enqueue_many(calls)
        seen: set[int] = set()

        def scaled_up() -> bool:
            assert sup.alive(), sup.stderr()
            seen.update(sup.remember_descendants())
            return len(_workers(sup.pid)) == 3

        await until(scaled_up, 20, "3 worker processes")

        async def drained() -> bool:
            (stats,) = await app.inspector.stats()
            return stats.completed == total

        deadline = time.monotonic() + 30
        while not await drained():
            assert time.monotonic() < deadline, cluster.logs()
            seen.update(sup.remember_descendants())
            await asyncio.sleep(0.1)
        # Idle: back to MIN, one process at a time, each retiring after a graceful stop.
        await until(lambda: sup.stderr().count("retired") == 2, 20, "2 processes to retire")
        assert len(_workers(sup.pid)) == 1
        log = sup.stderr()
        ups = re.findall(r"scale (\d)→(\d): oldest ready job [\d.]+ s old > 0\.3 s", log)
        downs = re.findall(r"scale (\d)→(\d): no ready job for \d+ s ≥ 1\.5 s", log)
        assert ups[:2] == [("1", "2"), ("2", "3")], log
        assert downs[-2:] == [("3", "2"), ("2", "1")], log
        assert "replacing it" not in log, log  # nothing died
        # Every job completed exactly once: a retiring process dropped nothing.
        counts = await app.backend.counts()
        assert counts["default"] == {conveyor.JobState.COMPLETED: total}, counts
        ledger = cluster.ledger()
        expected = [*range(short), *range(10_000, 10_000 + long)]
        for event in ("start", "done"):  # each ran once, to its end
            assert sorted(n for ev, n, _, _ in ledger if ev == event) == expected
        workers = {pid for ev, _, pid, _ in ledger if ev == "start"}
        assert len(workers) >= 3, workers  # the added processes took jobs
        # The first retirement came while long jobs ran on that process: they finished there.
        first = int(re.findall(r"worker process (\d+) retired", log)[0])
        told = _logged_at(log, "scale 3→2")
        ran = {n: (at, pid) for ev, n, pid, at in ledger if ev == "start" and n >= 10_000}
        ended = {n: at for ev, n, _, at in ledger if ev == "done" and n >= 10_000}
        held = [n for n, (at, pid) in ran.items() if pid == first and at < told < ended[n]]
        assert held, (first, told, ran, ended, log)
        sup.send(signal.SIGTERM)
        assert cluster.wait_exit(sup, 15) == 0, sup.stderr()
        assert not [p for p in seen if psutil.pid_exists(p) and _alive(p)]


def _logged_at(log: str, text: str) -> float:
    """The time (epoch seconds) of the first log line containing `text`."""
    line = next(line for line in log.splitlines() if text in line)
    stamp, ms = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(60)
async def test_a_dead_worker_process_is_replaced(cluster: Cluster) -> None:
    sup = cluster.worker(
        "--autoscale", "2:3", "--scale-cpu-idle", "0", "--no-scheduler", name="supervisor"
    )

    def workers(n: int, without: int | None = None) -> set[int] | None:
        found = _workers(sup.pid)
        return found if len(found) == n and without not in found else None

    first = await until(lambda: workers(2), 20, "2 worker processes")
    victim = min(first)
    psutil.Process(victim).kill()
    after = await until(lambda: workers(2, without=victim), 20, "a replacement")
    assert len(after - first) == 1
    assert f"worker process {victim} exited with -9" in sup.stderr()
    sup.send(signal.SIGTERM)
    assert cluster.wait_exit(sup, 15) == 0, sup.stderr()
    assert not [p for p in after if _alive(p)]
