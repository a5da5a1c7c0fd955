"""`conveyor inspect schedules` and `conveyor worker --no-scheduler`, as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import run

APP = """
import conveyor
app = conveyor.App("sqlite:///{db}")

@app.periodic("*/10 * * * * *")
async def beat() -> None: ...

@app.periodic("0 9 * * MON", tz="Europe/Berlin", queue="reports", args=("weekly",))
async def report(kind: str) -> None: ...

app.schedule(report, "@every 90s", args=("ops",), name="ops-digest")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(APP.format(db=tmp_path / "jobs.db"))
    return tmp_path


def test_inspect_schedules(project: Path) -> None:
    empty = run(project, "inspect", "schedules")
    assert empty.returncode == 0, empty.stderr
    for name, expr, zone in [
        ("beat", "*/10 * * * * *", "UTC"),
        ("report", "0 9 * * MON", "Europe/Berlin"),
        ("ops-digest", "@every 90s", "UTC"),
    ]:
        line = next(row for row in empty.stdout.splitlines() if f" {name} " in row)
        assert expr in line and zone in line
    assert run(project, "worker", "myapp:app", "--burst", "--no-scheduler").returncode == 0
    assert "no jobs" in run(project, "inspect", "stats").stdout  # no scheduler: no fire
    env = {**os.environ, "CONVEYOR_APP": "myapp:app"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "myapp:app"], cwd=project, env=env
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ls = run(project, "inspect", "ls", "--state", "scheduled", "--limit", "100")
            if "report" in ls.stdout and "beat" in ls.stdout:  # the next fires, ahead
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no fire jobs enqueued: {ls.stdout}")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    shown = run(project, "inspect", "schedules")
    assert shown.returncode == 0, shown.stderr
    assert "ops-digest" in shown.stdout
