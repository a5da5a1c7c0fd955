"""The command line with hostile stored text and bad input: literal output, one-line errors."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import conveyor
from conveyor.cli import cli, inspect_cmd
from conveyor.testing import drain

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m"  # set the title, clear the screen, a C1 CSI
MARKUP = "[/] [bold]x[/bold] [a-z]+ :thumbs_up:"


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as the longest value, so no cell wraps in the middle of a check."""
    monkeypatch.setattr(inspect_cmd.console, "width", 400)


def invoke(db: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--url", f"sqlite:///{db}", *args])


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, str, str]:
    """A SQLite file with one completed job whose argument is markup and one failed job whose
    error is markup and terminal escape codes; returns (db, completed id, failed id)."""
    db = tmp_path / "jobs.db"

    async def fill() -> tuple[str, str]:
        app = conveyor.App(f"sqlite:///{db}")

        @app.task
        async def echo(text: str) -> str:
            return text

        @app.task(retry=conveyor.RetryPolicy(max_attempts=1))
        async def explode(text: str) -> None:
            raise ValueError(f"{MARKUP} {ESCAPES} {text}")

        ok = await echo.enqueue(MARKUP)
        bad = await explode.enqueue("[/]")
        await drain(app)
        await app.aclose()
        return ok.id, bad.id

    ok_id, bad_id = asyncio.run(fill())
    return db, ok_id, bad_id


def assert_clean(out: str) -> None:
    """No raw control characters at all (only newlines) reached the output."""
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", out), repr(out)


def test_show_prints_stored_text_literally(stored: tuple[Path, str, str]) -> None:
    db, ok_id, bad_id = stored
    shown = invoke(db, "inspect", "show", ok_id)
    assert shown.exit_code == 0, shown.output
    assert f'{{"text":"{MARKUP}"}}' in shown.output  # the payload, tags and all
    assert f'"{MARKUP}"' in shown.output  # the result
    failed = invoke(db, "inspect", "show", bad_id)
    assert failed.exit_code == 0, failed.output
    assert f"ValueError: {MARKUP}" in failed.output
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in failed.output  # visible, not obeyed
    assert "Traceback (most recent call last)" in failed.output
    assert_clean(failed.output)


def test_ls_prints_stored_text_literally(stored: tuple[Path, str, str]) -> None:
    db, _, bad_id = stored
    listed = invoke(db, "inspect", "ls", "--limit", "1")
    assert listed.exit_code == 0, listed.output
    assert "more: --after " in listed.output
    cursor = listed.output.rsplit("more: --after ", 1)[1].strip()
    rest = invoke(db, "inspect", "ls", "--after", cursor)
    assert rest.exit_code == 0, rest.output
    assert bad_id in rest.output
    assert "ValueError: [/] [bold]x[/bold] [a-z]+" in rest.output
    assert_clean(rest.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--after", "²"), "'²' is not a cursor"),
        (("--after", "12abc"), "is not a cursor"),
        (("--after", "-1"), "is not a cursor"),
        (("--after", "9" * 40), "is not a cursor"),
        (("--after", "42/default"), "is not a cursor"),  # a Redis cursor on SQLite
        (("--limit", "-1"), "-1 is not in the range 1<=x<=1000"),
        (("--limit", "0"), "not in the range"),
        (("--limit", "1001"), "not in the range"),
        (("--limit", "many"), "'many' is not a valid integer"),
    ],
)
def test_ls_refuses_bad_cursors_and_limits_in_one_line(
    stored: tuple[Path, str, str], args: tuple[str, ...], message: str
) -> None:
    out = invoke(stored[0], "inspect", "ls", *args)
    assert out.exit_code == 2
    assert message in out.output
    assert isinstance(out.exception, SystemExit)  # click's usage error, not a crash


def test_ls_accepts_cursors_the_store_hands_out(stored: tuple[Path, str, str]) -> None:
    for cursor in ("0", "123456"):  # SQLite's; Redis adds "<seq>/<queue>"
        out = invoke(stored[0], "inspect", "ls", "--after", cursor)
        assert out.exit_code == 0, out.output


def test_version() -> None:
    out = CliRunner().invoke(cli, ["--version"])
    assert out.exit_code == 0
    assert out.output == f"conveyor, version {importlib.metadata.version('conveyor')}\n"
