"""The command line as a user runs it: one-line errors, exit codes, inspect tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

APP = """
import conveyor
app = conveyor.App("sqlite:///{db}")

@app.task
async def add(a: int, b: int) -> int:
    return a + b

@app.task(retry=conveyor.RetryPolicy(max_attempts=1))
async def broken() -> None:
    raise ValueError("kaput")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(APP.format(db=tmp_path / "jobs.db"))
    return tmp_path


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


def test_enqueue_work_inspect_requeue(project: Path) -> None:
    out = run(project, "enqueue", "add", "--args", "[1, 2]")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert len(job_id) == 32
    assert run(project, "enqueue", "broken").returncode == 0
    worker = run(project, "worker", "myapp:app", "--burst")
    assert worker.returncode == 0, worker.stderr
    assert "kaput" in worker.stderr  # one warning line per failure
    stats = run(project, "inspect", "stats")
    assert "default" in stats.stdout
    failed = run(project, "inspect", "ls", "--state", "failed")
    assert "broken" in failed.stdout
    assert "ValueError: kaput" in failed.stdout
    shown = run(project, "inspect", "show", job_id)
    assert "completed" in shown.stdout
    requeued = run(project, "inspect", "requeue", "--all-failed")
    assert "requeued 1 job(s)" in requeued.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("enqueue", "nope"), "error: no task named 'nope' is registered"),
        (("enqueue", "add", "--args", '["x", 1]'), "error: task 'add': Expected `int`"),
        (("enqueue", "add", "--args", "[1"), "not valid JSON"),
        (("enqueue", "add", "--args", "[1, 2]", "--delay", "-5"), "error: job option delay"),
        (("worker", "nosuchmodule:app"), "error: cannot import 'nosuchmodule'"),
        (("worker", "myapp:nothing"), "error: module 'myapp' has no attribute 'nothing'"),
        (("worker", "myapp:app", "-q", "a=0"), "error: queue weight in 'a=0' must be >= 1"),
        (("inspect", "show", "deadbeef"), "error: no job with id 'deadbeef'"),
        (("inspect", "ls", "--after", "²"), "Error: Invalid value for '--after': '²' is not a"),
        (("inspect", "ls", "--limit", "-1"), "Error: Invalid value for '--limit': -1 is not in"),
        (
            ("enqueue", "add", "--args", "[" + "[" * 300 + "]" * 300 + ", 1]"),
            "error: task 'add': argument 'a' nests deeper than 256 levels",
        ),
        (("enqueue", "add", "--args", "[" * 5000 + "]" * 5000), "nest deeper than 256 levels"),
    ],
)
def test_errors_are_one_clear_line(project: Path, args: tuple[str, ...], message: str) -> None:
    out = run(project, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_version(project: Path) -> None:
    out = run(project, "--version")
    assert out.returncode == 0
    assert out.stdout.startswith("conveyor, version ")
    assert "Traceback" not in out.stderr


def test_enqueue_wait_cancel_and_purge(project: Path) -> None:
    delayed = run(project, "enqueue", "add", "--args", "[1, 2]", "--delay", "3600")
    assert delayed.returncode == 0, delayed.stderr
    job_id = delayed.stdout.strip()
    cancelled = run(project, "inspect", "cancel", job_id, "--reason", "not needed")
    assert f"{job_id}: cancelled" in cancelled.stdout
    keyed = run(project, "enqueue", "add", "--args", "[2, 2]", "--key", "k-1")
    again = run(project, "enqueue", "add", "--args", "[2, 2]", "--key", "k-1")
    assert "(existing job with that key)" in again.stdout
    assert again.stdout.split()[0] == keyed.stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "myapp:app"],
        cwd=project,
        env={**os.environ, "CONVEYOR_APP": "myapp:app"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waited = run(project, "enqueue", "add", "--args", "[20, 22]", "--wait", "20")
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.splitlines()[-1] == "42"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    purged = run(project, "inspect", "purge", "--state", "cancelled")
    assert "purged 1 job(s)" in purged.stdout
