"""Pausing queues through the inspector and the CLI, on memory and SQLite (`app` fixture)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.backends.memory import MemoryBackend
from conveyor.capabilities import QueueControl, require
from conveyor.clock import FakeClock
from conveyor.errors import BackendError, ConfigError, InvalidOption
from conveyor.inspector import Inspector
from conveyor.testing import FaultyBackend
from conveyor.testing.contract import make_job


async def test_pause_and_resume_through_the_inspector(app: conveyor.App) -> None:
    @app.task(queue="emails")
    def send(to: str) -> None: ...

    await send.enqueue("a")
    change = await app.inspector.pause("emails")
    assert (change.queue, change.changed, change.known) == ("emails", True, True)
    assert (await app.inspector.pause("emails")).changed is False
    assert await app.inspector.paused() == ["emails"]
    (counts,) = await app.inspector.stats()
    assert counts.queue == "emails" and counts.paused and counts.queued == 1
    assert await app.backend.claim(ClaimRequest(["emails"], 5, 30.0, "x")) == []
    resumed = await app.inspector.resume("emails")
    assert resumed.changed and not (await app.inspector.resume("emails")).changed
    (counts,) = await app.inspector.stats()
    assert not counts.paused
    assert len(await app.backend.claim(ClaimRequest(["emails"], 5, 30.0, "x"))) == 1


async def test_pausing_a_queue_no_job_uses_is_allowed_but_said(
    app: conveyor.App, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.inspector"):
        change = await app.inspector.pause("emials")
    assert change.changed and not change.known
    assert "no job in the store uses yet" in caplog.text and "'emials'" in caplog.text
    # Listed by stats with zero counts, so an operator sees it.
    (counts,) = await app.inspector.stats()
    assert (counts.queue, counts.paused, counts.total) == ("emials", True, 0)
    assert await app.inspector.stats("other") == []


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "ünïcode", "a\x1bb"])
async def test_a_bad_queue_name_is_refused_and_nothing_is_written(
    app: conveyor.App, bad: str
) -> None:
    for op in (app.inspector.pause, app.inspector.resume):
        with pytest.raises(InvalidOption, match="invalid queue name"):
            await op(bad)
    assert await app.inspector.paused() == []
    assert await app.inspector.stats() == []


async def test_a_store_without_queue_control_is_a_config_error() -> None:
    class Plain(MemoryBackend):
        pause = resume = paused = None  # type: ignore[assignment]

    inspector = Inspector(Plain())
    with pytest.raises(ConfigError, match=r"inspector.pause\(\) needs the QueueControl"):
        await inspector.pause("emails")
    assert await inspector.stats() == []  # stats still work, nothing marked paused


async def test_faulty_backend_passes_queue_control_through() -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend(clock=clock))
    assert require(faulty, QueueControl, "test") is faulty
    assert await faulty.pause("emails") is True
    await faulty.enqueue([make_job(clock, queue="emails")])
    assert await faulty.claim(ClaimRequest(["emails"], 5, 30.0, "w")) == []  # inner's claim
    faulty.fail("resume")
    with pytest.raises(BackendError, match="injected fault: resume"):
        await faulty.resume("emails")
    assert await faulty.paused() == ["emails"]
    faulty.heal()
    assert await faulty.resume("emails") is True
    assert len(await faulty.claim(ClaimRequest(["emails"], 5, 30.0, "w"))) == 1


APP = """
import conveyor
app = conveyor.App("sqlite:///{db}")

@app.task(queue="emails")
async def send(to: str) -> None: ...
"""


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_APP": "myapp:app", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_inspect_pause_resume_and_stats(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP.format(db=tmp_path / "jobs.db"))
    assert run(tmp_path, "enqueue", "send", "--args", '["a"]').returncode == 0
    out = run(tmp_path, "inspect", "pause", "emails")
    assert out.returncode == 0 and "paused emails" in out.stdout and "note" not in out.stdout
    assert "was paused already" in run(tmp_path, "inspect", "pause", "emails").stdout
    stats = run(tmp_path, "inspect", "stats").stdout
    (row,) = [line for line in stats.splitlines() if line.split()[:1] == ["emails"]]
    assert "paused" in row
    typo = run(tmp_path, "inspect", "pause", "emials")
    assert typo.returncode == 0 and "no job uses queue 'emials' yet" in typo.stdout
    bad = run(tmp_path, "inspect", "pause", "no such queue")
    assert bad.returncode != 0 and "invalid queue name" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "resumed emails" in run(tmp_path, "inspect", "resume", "emails").stdout
    assert "was not paused" in run(tmp_path, "inspect", "resume", "emails").stdout
    stats = run(tmp_path, "inspect", "stats").stdout
    (row,) = [line for line in stats.splitlines() if line.split()[:1] == ["emails"]]
    assert "paused" not in row


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_an_idle_worker_on_a_paused_queue_blocks_and_resume_starts_it(
    store: str, tmp_path: Path
) -> None:
    from conveyor.backends.sqlite import SQLiteBackend

    inner = MemoryBackend() if store == "memory" else SQLiteBackend(tmp_path / "jobs.db")
    faulty = FaultyBackend(inner)
    app = conveyor.App(backend=faulty)
    done: list[int] = []

    @app.task(queue="emails")
    async def send(n: int) -> None:
        done.append(n)

    try:
        await app.inspector.pause("emails")
        await send.enqueue_many([(i,) for i in range(5)])
        async with app.worker(queues=["emails"], maintenance=False):
            await asyncio.sleep(0.3)
            # Ready jobs in a paused queue are not "ready now": the worker waits, not spins.
            assert faulty.calls["claim"] <= 4 and done == []
            await app.inspector.resume("emails")
            async with asyncio.timeout(5):
                while len(done) < 5:
                    await asyncio.sleep(0.01)
    finally:
        await app.aclose()
