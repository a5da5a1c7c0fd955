"""Prometheus metrics and health probes of a worker: real workers, real stores, real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import conveyor
from conveyor.errors import ConfigError
from conveyor.job import JobState
from conveyor.observability.http import MetricsServer
from conveyor.observability.prometheus import WorkerMetrics
from tests.redis.servers import Server as RedisProcess


def get(url: str) -> tuple[int, str, str]:
    """GET `url`: status, content type, body (an HTTP error status is a result too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read().decode()


async def aget(url: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(get, url)


async def scrape(server: MetricsServer) -> dict[str, list[Sample]]:
    """The samples of a /metrics scrape, by family name."""
    status, ctype, body = await aget(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=")
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named `name` whose labels include `labels`."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.fixture
async def sqlite_app(tmp_path: Path) -> AsyncIterator[conveyor.App]:
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")
    yield app
    await app.aclose()


async def test_a_drain_is_counted_by_outcome_with_histograms_and_store_gauges(
    app: conveyor.App,
) -> None:
    @app.task
    async def ok(n: int) -> int:
        return n

    @app.task(retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0.0, jitter=0))
    async def bad() -> None:
        raise ValueError("no")

    handles = [await ok.enqueue(i) for i in range(5)] + [await bad.enqueue()]
    await app.backend.enqueue([])  # noop: the store is open
    server = app.worker(concurrency=3, metrics_port=0)
    assert server.metrics is not None
    server.metrics.store.fresh = 0  # every scrape reads the store
    async with server:
        assert server.metrics is not None and server.metrics.port
        for _ in range(500):
            counts = await app.backend.counts()
            done = counts.get("default", {})
            if done.get(JobState.COMPLETED, 0) == 5 and done.get(JobState.FAILED, 0) == 1:
                break
            await asyncio.sleep(0.02)
        m = await scrape(server.metrics)
    assert len(handles) == 6
    jobs = m["conveyor_jobs"]
    assert value(jobs, "conveyor_jobs_total", task=ok.name, outcome="completed") == 5
    assert value(jobs, "conveyor_jobs_total", task=bad.name, outcome="retried") == 1
    assert value(jobs, "conveyor_jobs_total", task=bad.name, outcome="failed") == 1
    assert value(m["conveyor_job_retries"], "conveyor_job_retries_total", task=bad.name) == 1
    assert value(m["conveyor_dead_letters"], "conveyor_dead_letters_total", task=bad.name) == 1
    duration = m["conveyor_job_duration_seconds"]
    assert value(duration, "conveyor_job_duration_seconds_count", task=ok.name) == 5
    assert value(duration, "conveyor_job_duration_seconds_bucket", task=ok.name, le="+Inf") == 5
    pickup = m["conveyor_pickup_latency_seconds"]
    assert value(pickup, "conveyor_pickup_latency_seconds_count", queue="default") == 7
    assert value(m["conveyor_worker_slots"], "conveyor_worker_slots") == 3
    assert value(m["conveyor_jobs_running"], "conveyor_jobs_running") == 0
    assert value(m["conveyor_store_up"], "conveyor_store_up") == 1
    assert m["conveyor_store_scrape_timestamp_seconds"][0].value > 0
    queue = m["conveyor_queue_jobs"]
    assert value(queue, "conveyor_queue_jobs", queue="default", state="completed") == 5
    assert value(queue, "conveyor_queue_jobs", queue="default", state="failed") == 1
    assert value(queue, "conveyor_queue_jobs", queue="default", state="queued") == 0
    age = m["conveyor_queue_oldest_ready_age_seconds"]
    assert value(age, "conveyor_queue_oldest_ready_age_seconds", queue="default") == 0
    allowed = {"queue", "task", "outcome", "operation", "kind", "state", "le"}
    for samples in m.values():
        for s in samples:
            assert set(s.labels) <= allowed, s
            assert not any(h.id in s.labels.values() for h in handles), s


async def test_the_oldest_ready_age_and_running_jobs_are_read_at_scrape_time(
    sqlite_app: conveyor.App,
) -> None:
    app = sqlite_app
    started, release = asyncio.Event(), asyncio.Event()

    @app.task
    async def hold() -> None:
        started.set()
        await release.wait()

    @app.task(queue="later")
    async def waits() -> None:
        pass

    await hold.enqueue()
    await waits.enqueue()
    server = app.worker(["default"], concurrency=2, metrics_port=0)
    assert server.metrics is not None
    server.metrics.store.fresh = 0
    async with server:
        assert server.metrics is not None
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.05)
        m = await scrape(server.metrics)
        release.set()
    assert value(m["conveyor_jobs_running"], "conveyor_jobs_running") == 1
    queue = m["conveyor_queue_jobs"]
    assert value(queue, "conveyor_queue_jobs", queue="later", state="queued") == 1
    assert value(queue, "conveyor_queue_jobs", queue="default", state="running") == 1
    # Only the worker's own queues get an age; nothing is ready on "default".
    ages = m["conveyor_queue_oldest_ready_age_seconds"]
    assert [s.labels["queue"] for s in ages] == ["default"] and ages[0].value == 0


async def test_healthz_readyz_and_other_paths(sqlite_app: conveyor.App) -> None:
    server = sqlite_app.worker(metrics_port=0)
    async with server:
        assert server.metrics is not None
        url = server.metrics.url
        assert await aget(url + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert await aget(url + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
        assert (await aget(url + "/nope"))[0] == 404
        assert (await aget(url + "/metrics?x=1"))[0] == 200
        stuck = server.metrics.metrics
        stuck.stuck_reported("timeout")
        stuck.stuck_reported("timeout")
        stuck.stuck_reported("loop_blocked")
        m = await scrape(server.metrics)
        reports = m["conveyor_stuck_reports"]
        assert value(reports, "conveyor_stuck_reports_total", kind="timeout") == 2
        assert value(reports, "conveyor_stuck_reports_total", kind="loop_blocked") == 1
        post = urllib.request.Request(url + "/metrics", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as caught:
            await asyncio.to_thread(urllib.request.urlopen, post, None, 10)
        assert caught.value.code == 405
        caught.value.close()


async def test_a_store_down_at_start_is_not_ready_but_metrics_answer(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    url = redis.url
    redis.stop()  # nothing listens on its port now
    app = conveyor.App(url)
    server = app.worker(metrics_port=0, presence=False, rollups=False)
    run = asyncio.create_task(server.run())
    try:
        for _ in range(500):
            if server.metrics is not None and server.metrics.port:
                break
            await asyncio.sleep(0.01)
        assert server.metrics is not None
        base = server.metrics.url
        assert await aget(base + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        status, _, body = await aget(base + "/readyz")
        assert status == 503 and body.startswith("not ready: ") and body.count("\n") == 1
        m = await scrape(server.metrics)
        assert value(m["conveyor_store_up"], "conveyor_store_up") == 0
        assert "conveyor_queue_jobs" not in m  # never read: no store gauges at all
        assert value(m["conveyor_worker_slots"], "conveyor_worker_slots") == 16
        redis.start()  # same port: the worker starts claiming, and becomes ready
        for _ in range(500):
            if (await aget(base + "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert await aget(base + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    finally:
        server.stop()
        await run
        await app.aclose()
        redis.stop()


async def test_a_store_that_goes_down_marks_store_gauges_stale_and_recovers(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    app = conveyor.App(redis.url)

    @app.task
    async def ok() -> None:
        pass

    try:
        await ok.enqueue()
        server = app.worker(metrics_port=0, presence=False, rollups=False)
        assert server.metrics is not None
        server.metrics.store.fresh = 0.2
        async with server:
            assert server.metrics is not None
            for _ in range(500):
                m = await scrape(server.metrics)
                if m.get("conveyor_jobs"):
                    break
                await asyncio.sleep(0.02)
            assert value(m["conveyor_store_up"], "conveyor_store_up") == 1
            stamp = m["conveyor_store_scrape_timestamp_seconds"][0].value
            redis.stop()
            await asyncio.sleep(0.3)  # past the gauges' freshness
            status, _, body = await aget(server.metrics.url + "/readyz")
            assert status == 503 and body.startswith("not ready: the store")
            m = await scrape(server.metrics)
            assert value(m["conveyor_store_up"], "conveyor_store_up") == 0
            assert m["conveyor_store_scrape_timestamp_seconds"][0].value == stamp  # stale
            jobs = m["conveyor_jobs"]
            assert value(jobs, "conveyor_jobs_total", outcome="completed") == 1
            redis.start()
            for _ in range(200):
                m = await scrape(server.metrics)
                if value(m["conveyor_store_up"], "conveyor_store_up") == 1:
                    break
                await asyncio.sleep(0.1)
            assert value(m["conveyor_store_up"], "conveyor_store_up") == 1
            assert m["conveyor_store_scrape_timestamp_seconds"][0].value > stamp
    finally:
        await app.aclose()
        redis.stop()


async def test_a_port_in_use_is_one_clear_config_error(sqlite_app: conveyor.App) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = sqlite_app.worker(metrics_port=port)
        with pytest.raises(ConfigError, match=f"^metrics port {port} on 127.0.0.1 is in use$"):
            await server.run()


def test_the_cli_serves_metrics_and_says_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mapp.py").write_text(
        f"import conveyor\napp = conveyor.App('sqlite:///{tmp_path}/j.db')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "worker", "mapp:app", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: metrics port {port} on 127.0.0.1 is in use"
    ]
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "mapp:app", "--autoscale", "1:2",
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --metrics-port with --autoscale is not supported yet; use -p N or one process"
    ]


def test_without_prometheus_client_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import conveyor\n"
        "app = conveyor.App('memory://')\n"
        "try:\n    app.worker(metrics_port=0)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == (
        "MissingDependency --metrics-port needs the metrics extra: pip install 'conveyor[metrics]'"
    ), done.stderr


def test_the_observer_caches_labelled_children() -> None:
    metrics = WorkerMetrics(slots=4)
    metrics.store_error("claim", OSError("x"))
    metrics.store_error("claim", OSError("x"))
    first = metrics._errors("claim")
    assert metrics._errors("claim") is first
    assert (
        metrics.registry.get_sample_value("conveyor_store_errors_total", {"operation": "claim"})
        == 2
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _popen(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(cwd / "err.log", "wb") as err:
        return subprocess.Popen(argv, cwd=cwd, env=env, stderr=err, start_new_session=True)


async def test_p2_one_scrape_of_the_supervisor_shows_the_sum_of_both_processes(
    tmp_path: Path,
) -> None:
    (tmp_path / "papp.py").write_text(
        "import conveyor\n"
        f"app = conveyor.App('sqlite:///{tmp_path}/j.db')\n"
        "@app.task(name='ok')\n"
        "async def ok(n: int) -> int:\n"
        "    return n\n"
    )
    app = conveyor.App(f"sqlite:///{tmp_path}/j.db")

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    for i in range(20):
        await ok.enqueue(i)
    await app.aclose()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    argv = [sys.executable, "-m", "conveyor", "worker", "papp:app", "-p", "2", "-c", "3",
            "--metrics-port", str(port)]  # fmt: skip
    proc = await asyncio.to_thread(_popen, argv, tmp_path, env)
    base = f"http://127.0.0.1:{port}"
    try:
        m: dict[str, list[Sample]] = {}
        for _ in range(300):
            try:
                _, _, body = await aget(base + "/metrics")
            except OSError:
                await asyncio.sleep(0.1)
                continue
            m = {f.name: f.samples for f in text_string_to_metric_families(body)}
            done = sum(
                s.value for s in m.get("conveyor_jobs", []) if s.name == "conveyor_jobs_total"
            )
            slots = m.get("conveyor_worker_slots", [])
            stored = [
                s.value
                for s in m.get("conveyor_queue_jobs", [])
                if s.labels["state"] == "completed"
            ]  # the store gauges are cached up to 5 s
            if done == 20 and slots and slots[0].value == 6 and stored == [20]:
                break
            await asyncio.sleep(0.05)
        assert value(m["conveyor_jobs"], "conveyor_jobs_total", outcome="completed") == 20
        assert value(m["conveyor_worker_slots"], "conveyor_worker_slots") == 6  # 2 x 3
        queue = m["conveyor_queue_jobs"]
        assert value(queue, "conveyor_queue_jobs", queue="default", state="completed") == 20
        for _ in range(100):
            if (await aget(base + "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert await aget(base + "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
        assert await aget(base + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    finally:
        proc.terminate()
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, (tmp_path / "err.log").read_text()
