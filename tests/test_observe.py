"""Worker presence and job metrics over time: real workers on memory and SQLite stores."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import conveyor
from conveyor.capabilities import Rollup
from conveyor.cli import cli
from conveyor.errors import InvalidOption
from conveyor.job import JobState
from conveyor.rollup import RollupBuffer, bucket_of, bucket_upper, percentile, summarize
from conveyor.testing import drain


async def test_a_running_worker_is_listed_with_its_jobs_and_leaves_on_stop(
    app: conveyor.App,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def hold() -> None:
        started.set()
        await release.wait()

    handle = await hold.enqueue()
    server = app.worker(concurrency=4, presence_every=0.05, name="w-1")
    async with server:
        await asyncio.wait_for(started.wait(), 5)
        for _ in range(100):
            online = await app.inspector.workers()
            if online and online[0].jobs:
                break
            await asyncio.sleep(0.02)
        (w,) = online
        assert (w.id, w.pid, w.concurrency, w.running) == ("w-1", os.getpid(), 4, 1)
        assert w.jobs == (handle.id,)
        assert w.queues == ("default",) and w.version and w.host
        release.set()
    assert await app.inspector.workers() == []  # a clean stop leaves at once


async def test_metrics_count_outcomes_and_survive_a_purge(app: conveyor.App) -> None:
    @app.task
    async def ok(n: int) -> int:
        return n

    @app.task(retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0.0, jitter=0))
    async def bad() -> None:
        raise ValueError("no")

    for n in range(30):
        await ok.enqueue(n)
    for _ in range(5):
        await bad.enqueue()
    await drain(app)
    report = await app.inspector.metrics(since=timedelta(hours=1))
    by = {g.name: g for g in report.groups}
    assert (by["ok"].completed, by["ok"].failed) == (30, 0)
    assert (by["bad"].retried, by["bad"].failed) == (5, 5)
    assert by["bad"].failure_rate == 1.0
    assert report.total.completed == 30 and report.total.attempts == 40
    assert sum(c for _, c, _ in report.total.throughput) == 30
    assert len(report.total.throughput) in (60, 61)  # a point per minute, rounded out
    await app.inspector.purge(older_than=0)
    assert await app.inspector.count(JobState.COMPLETED) == 0
    again = await app.inspector.metrics(since=3600, by="queue")
    assert [(g.name, g.completed, g.failed) for g in again.groups] == [("default", 30, 5)]


async def test_rollups_off_writes_none(app: conveyor.App) -> None:
    @app.task
    async def ok() -> None:
        pass

    await ok.enqueue()
    await app.worker(burst=True, rollups=False, presence=False).run()
    assert (await app.inspector.metrics(3600)).groups == ()


async def test_metrics_refuse_bad_arguments(app: conveyor.App) -> None:
    for since in (0, -5, float("nan"), timedelta(0)):
        with pytest.raises(InvalidOption, match="since"):
            await app.inspector.metrics(since)
    with pytest.raises(InvalidOption, match="by"):
        await app.inspector.metrics(60, by="host")  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="queue"):
        await app.inspector.metrics(60, queue="bad queue")


async def test_copy_enqueues_a_fresh_job_like_the_original(app: conveyor.App) -> None:
    @app.task(retry=conveyor.RetryPolicy(max_attempts=1))
    async def once(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n

    failed = await once.options(key="k-1").enqueue(-1)
    await drain(app)
    copy_id = await app.inspector.copy(failed.id)
    copy = await app.inspector.job(copy_id)
    assert copy.id != failed.id and copy.state is JobState.QUEUED
    assert (copy.task, copy.payload, copy.attempts, copy.errors) == (
        "once",
        (await app.inspector.job(failed.id)).payload,
        0,
        (),
    )
    assert copy.key is None and copy.meta["copy_of"] == failed.id
    assert await app.inspector.requeue_many([failed.id, copy_id, "nope"]) == 1


def test_percentiles_read_from_buckets_are_within_a_bucket() -> None:
    buffer = RollupBuffer()
    for i in range(1, 1001):
        buffer.add(at=120.0, queue="q", task="t", outcome="completed", duration=i / 1000, wait=0)
    (row,) = buffer.take()
    report = summarize([row], since=60, until=180)
    (g,) = report.groups
    for got, true in ((g.duration_p50, 0.5), (g.duration_p95, 0.95), (g.duration_p99, 0.99)):
        assert true / 1.19 <= got <= true * 1.19
    assert g.duration_mean == pytest.approx(0.5005)
    assert bucket_of(0) == 0 and bucket_of(0.0005) == 0 and bucket_of(float("nan")) == 0
    assert bucket_upper(bucket_of(3.0)) >= 3.0
    assert percentile({}, 0.5) == 0.0
    # rows outside the range are left out
    late = Rollup(minute=600, queue="q", task="t", values={"completed": 9})
    assert summarize([row, late], since=60, until=180).total.completed == 1000


def test_cli_inspect_workers_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    app_file = tmp_path / "obsapp.py"
    app_file.write_text(
        textwrap.dedent(
            f"""
            import conveyor
            app = conveyor.App({url!r})

            @app.task
            async def ping(n: int) -> int:
                return n
            """
        )
    )

    async def fill() -> None:
        sys.path.insert(0, str(tmp_path))
        try:
            import obsapp  # type: ignore[import-not-found]

            for n in range(12):
                await obsapp.ping.enqueue(n)
            await drain(obsapp.app)
            await obsapp.app.aclose()
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("obsapp", None)

    asyncio.run(fill())
    runner = CliRunner()
    monkeypatch.syspath_prepend(str(tmp_path))

    def invoke(*args: str) -> Result:
        sys.modules.pop("obsapp", None)  # each command loads (and closes) the app afresh
        return runner.invoke(cli, ["-A", "obsapp:app", "inspect", *args])

    out = invoke("metrics", "--since", "1h")
    assert out.exit_code == 0, out.output
    assert "ping" in out.output and "12" in out.output
    out = invoke("metrics", "--since", "soon")
    assert out.exit_code != 0 and "not a duration" in out.output
    out = invoke("workers")
    assert out.exit_code == 0 and "no workers online" in out.output


@pytest.mark.slow
def test_a_sigkilled_worker_disappears_after_three_beats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    script = textwrap.dedent(
        f"""
        import asyncio, conveyor
        app = conveyor.App({url!r})
        async def main():
            async with app:
                await app.worker(presence_every=0.2, name="doomed").run()
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    app = conveyor.App(url)

    async def online() -> list[str]:
        return [w.id for w in await app.inspector.workers()]

    try:
        deadline = time.monotonic() + 20
        while "doomed" not in asyncio.run(online()):
            assert time.monotonic() < deadline, "the worker never showed up"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while "doomed" in asyncio.run(online()):
            assert time.monotonic() - killed < 5, "a dead worker is still listed"
            time.sleep(0.05)
        assert time.monotonic() - killed >= 0.3  # it went by its ttl, not by a leave
    finally:
        if proc.poll() is None:
            proc.kill()
        asyncio.run(app.aclose())


def test_app_mount_dashboard_serves_under_the_path(tmp_path: Path) -> None:
    import warnings

    from starlette.applications import Starlette

    with warnings.catch_warnings():  # starlette 1.x prefers httpx2 over httpx
        warnings.simplefilter("ignore", UserWarning)
        from starlette.testclient import TestClient

    from conveyor.errors import ConfigError

    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")
    host = Starlette()
    app.mount_dashboard(host, "/jobs", auth=lambda request: request.headers.get("x-admin") == "1")
    with TestClient(host) as client:
        assert client.get("/jobs/").status_code == 401
        page = client.get("/jobs/queues", headers={"x-admin": "1"})
        assert page.status_code == 200 and 'data-page="queues"' in page.text
        assert 'href="/jobs/jobs"' in page.text  # links follow the mount
    with pytest.raises(ConfigError, match="path"):
        app.mount_dashboard(host, "jobs")
    with pytest.raises(ConfigError, match="mount"):
        app.mount_dashboard(object(), "/jobs")
