"""`conveyor inspect locks`: the held locks, stored text printed literally."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.cli import cli, inspect_cmd

OWNER = "host:1 [bold]x[/bold] \x1b]0;owned\x07"


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_cmd.console, "width", 400)


def test_inspect_locks_lists_holders_literally(tmp_path: Path) -> None:
    db = tmp_path / "j.db"

    async def take() -> int:
        async with SQLiteBackend(db) as store:
            await store.acquire_lock("other", "me", 5)
            token = await store.acquire_lock("report:generate", OWNER, 60)
            assert token is not None
            return token

    token = asyncio.run(take())
    out = CliRunner().invoke(cli, ["--url", f"sqlite:///{db}", "inspect", "locks"])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if "report:generate" in line]
    (line,) = lines
    assert "host:1 [bold]x[/bold] \\x1b]0;owned\\x07" in line  # markup and escapes shown
    assert re.search(rf"\b{token}\b", line) and re.search(r"\b(59|60)\.\d s\b", line)
    assert "\x1b" not in out.output
    assert out.output.index("other") < out.output.index("report:generate")  # by name


def test_inspect_locks_with_none_held(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["--url", f"sqlite:///{tmp_path}/j.db", "inspect", "locks"])
    assert out.exit_code == 0, out.output
    assert "no locks held" in out.output
