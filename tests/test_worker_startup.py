"""A worker's start: which queues it serves when given none, a store that is down at start
(waited for), and one that refuses it (one clear line, at once)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conveyor
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.errors import BackendError, StoreUnavailable
from conveyor.testing import FaultyBackend
from conveyor.testing.redis_server import RedisServer
from tests.redis.servers import Server
from tests.redis.test_pipe import Tls, tls_server  # noqa: F401 (a fixture)

APP = """
import os
import conveyor

app = conveyor.App(os.environ["STARTUP_URL"])

@app.task(queue="emails")
async def send(n: int) -> int:
    return n + 1

@app.task
async def plain(n: int) -> int:
    return n
"""


class Unreachable(FaultyBackend):
    """Fails chosen operations with a `StoreUnavailable`, transient or not."""

    transient = True

    def _enter(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if op in self.failing:
            self.failures += 1
            raise StoreUnavailable("injected: the store is out of reach", transient=self.transient)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(APP)
    return tmp_path


def _cli(project: Path, url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "STARTUP_URL": url, "PYTHONPATH": str(project)}
    return [sys.executable, "-m", "conveyor", *args], env


def _run(project: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv, env = _cli(project, url, *args)
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=60)


# -- queues --------------------------------------------------------------------------------


async def test_a_worker_given_no_queues_serves_every_declared_queue(
    app: conveyor.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(queue="emails")
    async def send(to: str) -> str:
        return f"sent to {to}"

    @app.task
    async def other() -> None:
        pass

    h = await send.enqueue("a@b.c")
    h2 = await other.enqueue()
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    stats = await app.worker(burst=True, maintenance=False).run()
    assert stats.completed == 2
    assert await h.result(timeout=1) == "sent to a@b.c"
    assert await h2.status() is conveyor.JobState.COMPLETED
    assert any("queues=default=1,emails=1" in r.getMessage() for r in caplog.records)
    # Explicit queues still narrow the worker.
    h3 = await send.enqueue("x@y.z")
    assert (await app.worker("default", burst=True, maintenance=False).run()).completed == 0
    assert await h3.status() is conveyor.JobState.QUEUED


def test_cli_worker_without_queues_serves_the_tasks_queues(project: Path) -> None:
    url = f"sqlite:///{project}/jobs.db"
    enq = _run(project, url, "--app", "myapp:app", "enqueue", "send", "--args", "[1]")
    assert enq.returncode == 0, enq.stderr
    out = _run(project, url, "-v", "worker", "myapp:app", "--burst")
    assert out.returncode == 0, out.stderr
    assert "queues=default=1,emails=1" in out.stderr
    shown = _run(project, url, "--app", "myapp:app", "inspect", "show", enq.stdout.strip())
    assert "completed" in shown.stdout, shown.stdout + shown.stderr
    # -q still means exactly those queues.
    enq2 = _run(project, url, "--app", "myapp:app", "enqueue", "send", "--args", "[2]")
    narrow = _run(project, url, "-v", "worker", "myapp:app", "--burst", "-q", "default")
    assert "queues=default=1 " in narrow.stderr, narrow.stderr
    shown = _run(project, url, "--app", "myapp:app", "inspect", "show", enq2.stdout.strip())
    assert "queued" in shown.stdout, shown.stdout + shown.stderr


# -- a store down at start -----------------------------------------------------------------


async def test_a_store_down_at_start_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = Unreachable(SQLiteBackend(tmp_path / "jobs.db"))
    app = conveyor.App(backend=faulty)

    @app.task
    async def work(n: int) -> int:
        return n * 2

    h = await work.enqueue(21)
    faulty.fail("claim")
    caplog.set_level(logging.WARNING)
    server = app.worker(maintenance=True)
    entered = asyncio.Event()

    async def host() -> None:
        async with server:  # returns only once the worker is claiming
            entered.set()
            assert await h.result(timeout=5) == 42

    async with asyncio.TaskGroup() as tg:
        tg.create_task(host())
        await asyncio.sleep(0.5)
        assert not entered.is_set()
        assert faulty.calls["claim"] >= 3  # retried with backoff
        faulty.heal()
        await asyncio.wait_for(entered.wait(), 5)
    said = [r for r in caplog.records if "store unavailable at start, retrying" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert "injected: the store is out of reach" in said[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    await app.aclose()


@pytest.mark.parametrize("error", ["not transient", "other"])
async def test_a_store_refusing_at_start_fails_at_once(tmp_path: Path, error: str) -> None:
    """A `StoreUnavailable` that is not transient (bad credentials, say), or any other
    store error, at start: raised from the first claim, not retried."""
    inner = SQLiteBackend(tmp_path / "jobs.db")
    if error == "other":
        faulty = FaultyBackend(inner)  # a plain BackendError
    else:
        faulty = Unreachable(inner)
        faulty.transient = False
    faulty.fail("claim")
    app = conveyor.App(backend=faulty)
    began = time.monotonic()
    with pytest.raises(BackendError):
        async with app.worker():
            pass
    assert time.monotonic() - began < 2
    assert faulty.calls["claim"] == 1
    await app.aclose()


@pytest.mark.timeout(60)
def test_cli_worker_waits_for_redis_started_after_it(
    project: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    srv = Server(tmp_path / "late")
    srv.port = _free_port()
    argv, env = _cli(project, srv.url, "worker", "myapp:app")
    err = tmp_path / "worker.err"
    with open(err, "wb") as fe:
        worker = subprocess.Popen(argv, cwd=project, env=env, stderr=fe, stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        assert worker.poll() is None, err.read_text()
        srv.start()
        enq = _run(project, srv.url, "--app", "myapp:app", "enqueue", "send", "--args", "[41]",
                   "--wait", "20")  # fmt: skip
        assert enq.returncode == 0, enq.stderr + err.read_text()
        assert enq.stdout.splitlines()[-1] == "42"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, err.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        srv.stop()
    stderr = err.read_text()
    assert stderr.count("store unavailable at start, retrying") == 1, stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.timeout(60)
def test_cli_worker_with_a_wrong_password_says_so_in_one_line(
    project: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    srv = Server(tmp_path / "auth", ["--requirepass", "the-right-one"])
    srv.start()
    try:
        url = f"redis://:not-the-pw-9f3@127.0.0.1:{srv.port}/0"
        began = time.monotonic()
        out = _run(project, url, "worker", "myapp:app")
        took = time.monotonic() - began
    finally:
        srv.stop()
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: Redis at redis://***@127.0.0.1"), lines
    assert "refused the connection" in lines[0], lines
    assert "invalid username-password pair" in lines[0], lines
    assert "not-the-pw-9f3" not in out.stderr + out.stdout
    assert took < 20


async def test_an_unverified_certificate_fails_at_once(tls_server: Tls) -> None:  # noqa: F811
    """TLS to a server whose certificate we can't verify (no CA given): not transient, so
    the worker fails at start instead of waiting."""
    app = conveyor.App(f"rediss://localhost:{tls_server.port}/0")
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match="certificate verify failed") as info:
        async with asyncio.timeout(20), app.worker():
            pass
    assert not info.value.transient
    assert time.monotonic() - began < 10
    await app.aclose()
