"""`conveyor inspect limits`, `inspect circuit open|close` and the lanes under `inspect stats`,
on a real SQLite file, at 80 columns."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import conveyor
from conveyor.backends.base import ClaimRequest, JobFilter
from conveyor.cli import cli, inspect_cmd
from tests.test_cli import run

APP = """
import conveyor
app = conveyor.App("sqlite:///{db}")

@app.task(concurrency=2, circuit=conveyor.Circuit(failure_rate=0.5, window=30, cooldown=60))
async def push_crm(contact_id: int) -> None: ...

@app.task(rate_limit="10/m", limit_key="{{account_id}}", queue="low")
async def notify(account_id: int) -> None: ...

@app.task(group="{{tenant}}", group_weight=3)
async def import_rows(tenant: str, n: int) -> None: ...

@app.task
async def plain() -> None: ...
"""

TENANT = "a-tenant-with-a-name-long-enough-to-wrap-in-its-column-" + "x" * 40


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_cmd.console, "width", 80)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An app module over a SQLite file with lanes in use: push_crm's two slots taken and
    two jobs waiting, one notify key whose circuit is open for 60 s, one long group's job
    running."""
    db = tmp_path / "jobs.db"
    (tmp_path / "myapp.py").write_text(APP.format(db=db))
    namespace: dict[str, object] = {}
    exec(APP.format(db=db), namespace)
    app = namespace["app"]
    assert isinstance(app, conveyor.App)

    async def fill() -> None:
        push_crm, notify, import_rows = (
            app.registry.get(n) for n in ("push_crm", "notify", "import_rows")
        )
        await push_crm.enqueue_many([(i,) for i in range(4)])
        await notify.enqueue(7)
        await import_rows.enqueue(TENANT, 1)
        claimed = await app.backend.claim(ClaimRequest(["default"], 5, 300.0, "w"))
        assert sorted(lease.job.lane for lease in claimed) == [TENANT, "push_crm", "push_crm"]
        await app.inspector.open_circuit("notify:7", queue="low", duration=60)
        await app.aclose()

    asyncio.run(fill())
    return tmp_path


def invoke(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--url", f"sqlite:///{project / 'jobs.db'}", *args])


def row(output: str, name: str) -> str:
    (line,) = [line for line in output.splitlines() if f" {name} " in f" {line} "]
    return line


def test_inspect_limits_shows_each_lane_within_80_columns(project: Path) -> None:
    out = invoke(project, "inspect", "limits")
    assert out.exit_code == 0, out.output
    assert all(len(line) <= 80 for line in out.output.splitlines()), out.output
    header = out.output.splitlines()[0].split()
    assert header == ["queue", "lane", "ready", "run", "rate", "tokens", "circuit", "fail"]
    crm = row(out.output, "push_crm").split()
    assert crm == ["default", "push_crm", "2", "2/2", "-", "-", "closed", "0/0"]
    note = row(out.output, "notify:7")
    assert re.fullmatch(r"low +notify:7 +1 +0 +10/m +10/10 +open (59|60)s +-", note.strip())
    assert TENANT[:20] in out.output  # a long lane wraps in its column
    lanes = [line.split()[1] for line in out.output.splitlines()[2:] if line[:1].strip()]
    assert lanes[-1] == "notify:7"  # by queue, then lane: default first
    low = invoke(project, "inspect", "limits", "--queue", "low")
    assert "notify:7" in low.output and "push_crm" not in low.output


def test_inspect_limits_with_no_lanes(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["--url", f"sqlite:///{tmp_path}/j.db", "inspect", "limits"])
    assert out.exit_code == 0, out.output
    assert "no lanes" in out.output


def test_inspect_stats_says_the_lanes_of_each_queue(project: Path) -> None:
    out = invoke(project, "inspect", "stats")
    assert out.exit_code == 0, out.output
    assert all(len(line) <= 80 for line in out.output.splitlines()), out.output
    assert "default: 2 lanes, 1 held back" in out.output  # push_crm: both slots taken
    assert "low: 1 lane, 1 held back, 1 circuit open" in out.output
    assert row(out.output, "low").split()[:4] == ["low", "0", "0", "1"]  # the table is intact


def test_inspect_circuit_by_task_name_and_by_lane(project: Path) -> None:
    opened = run(project, "inspect", "circuit", "open", "push_crm", "--for", "30")
    assert opened.returncode == 0, opened.stderr
    assert "circuit of push_crm in default: closed -> open until 20" in opened.stdout
    limits = run(project, "inspect", "limits")
    assert re.search(r"push_crm .* open ([12]\d|30)s", limits.stdout), limits.stdout
    closed = run(project, "inspect", "circuit", "close", "push_crm")
    assert "circuit of push_crm in default: open -> closed" in closed.stdout
    by_lane = run(project, "inspect", "circuit", "close", "notify:7", "--queue", "low")
    assert "circuit of notify:7 in low: open -> closed" in by_lane.stdout
    by_hand = run(project, "inspect", "circuit", "open", "notify:7", "--queue", "low")
    assert "closed -> open until closed" in by_hand.stdout
    assert "open (by hand)" in row(run(project, "inspect", "limits").stdout, "notify:7")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("open", "notify"), "task 'notify' has a lane per value of limit_key='{account_id}'"),
        (("open", "import_rows"), "task 'import_rows' has a lane per value of group="),
        (("close", "plain"), "task 'plain' has no limits, group or circuit"),
        (("open", "a b"), "error: invalid lane 'a b': use 1-255 characters"),
    ],
)
def test_inspect_circuit_refuses_bad_targets(
    project: Path, args: tuple[str, ...], message: str
) -> None:
    out = run(project, "inspect", "circuit", *args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("close", "push_crm", "--for", "5"), "--for goes with open only"),
        (("open", "push_crm", "--for", "0"), "Invalid value for '--for'"),
        (("open", "x", "--queue", "no queue"), "invalid queue name 'no queue'"),
        (("open", "x" * 256), "invalid lane 'xxxxx"),
    ],
)
def test_inspect_circuit_refuses_bad_options(
    project: Path, args: tuple[str, ...], message: str
) -> None:
    out = invoke(project, "inspect", "circuit", *args)
    assert out.exit_code != 0
    assert message in out.output + str(out.exception)
    assert run_lanes(project) == sorted([TENANT, "notify:7", "push_crm"])  # nothing created


def run_lanes(project: Path) -> list[str]:
    async def lanes() -> list[str]:
        app = conveyor.App(f"sqlite:///{project / 'jobs.db'}")
        try:
            return sorted(lane.lane for lane in await app.inspector.lanes())
        finally:
            await app.aclose()

    return asyncio.run(lanes())


def test_inspect_circuit_on_an_unknown_lane_says_so(project: Path) -> None:
    out = invoke(project, "inspect", "circuit", "close", "typo:lane")
    assert out.exit_code == 0, out.output
    assert "circuit of typo:lane in default: closed -> closed" in out.output
    assert "note: the store kept no lane 'typo:lane' in 'default'" in out.output


def test_inspect_show_gives_a_jobs_lane_and_limits(project: Path) -> None:
    async def ids() -> list[str]:
        app = conveyor.App(f"sqlite:///{project / 'jobs.db'}")
        page = await app.backend.query(JobFilter(queue="low"))
        await app.aclose()
        return [job.id for job in page.jobs]

    (job_id,) = asyncio.run(ids())
    out = invoke(project, "inspect", "show", job_id)
    assert out.exit_code == 0, out.output
    assert "notify:7 (rate 0.166667/s burst 10)" in out.output
