"""When options: `at`/`deadline` are absolute (datetimes), `delay`/`deadline_in` relative
(seconds or timedeltas); a float that can only be a mistake is refused, and so is a job that
could never start before its deadline."""

from __future__ import annotations

import datetime as dt
import time

import pytest

import conveyor
from conveyor.errors import InvalidOption
from conveyor.producer import JobOptions, resolve

NOW = 1_700_000_000.0
LATER = dt.datetime.fromtimestamp(NOW + 3600, dt.UTC)


def fields(**opts: object) -> dict[str, object]:
    return resolve(JobOptions.from_dict(opts), NOW)


def test_deadline_in_is_relative_seconds_or_a_timedelta() -> None:
    assert fields(deadline_in=60)["deadline"] == NOW + 60
    assert fields(deadline_in=dt.timedelta(minutes=2))["deadline"] == NOW + 120


def test_deadline_is_an_absolute_datetime() -> None:
    assert fields(deadline=LATER)["deadline"] == NOW + 3600


@pytest.mark.parametrize("value", [60, 60.0, time.time() + 60, NOW + 60])
def test_a_number_as_deadline_is_refused_as_ambiguous(value: float) -> None:
    with pytest.raises(
        InvalidOption, match=r"deadline takes a timezone-aware datetime.*deadline_in"
    ):
        fields(deadline=value)


def test_delay_takes_seconds_or_a_timedelta() -> None:
    assert fields(delay=30)["run_at"] == NOW + 30
    assert fields(delay=dt.timedelta(seconds=90))["run_at"] == NOW + 90
    with pytest.raises(InvalidOption, match="delay must be a finite number >= 0"):
        fields(delay=dt.timedelta(seconds=-1))


def test_at_takes_a_datetime_or_plausible_epoch_seconds() -> None:
    assert fields(at=LATER)["run_at"] == NOW + 3600
    assert fields(at=NOW + 60)["run_at"] == NOW + 60
    assert fields(at=NOW - 60)["run_at"] == NOW - 60  # a moment ago: runs now


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (60, "for seconds from now use delay="),  # 1970: meant "in a minute"
        (NOW * 1000, "milliseconds are not seconds"),
        (NOW + 11 * 365 * 86_400, "milliseconds are not seconds"),
    ],
)
def test_an_implausible_epoch_for_at_is_refused(value: float, hint: str) -> None:
    with pytest.raises(InvalidOption, match=f"more than 10 years from now.*{hint}"):
        fields(at=value)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"delay": 120, "deadline_in": 60}, "after its deadline, so it could never start"),
        ({"at": LATER, "deadline_in": 60}, "could never start"),
        ({"at": NOW + 61, "deadline": LATER - dt.timedelta(minutes=59)}, "could never start"),
        ({"deadline": LATER, "deadline_in": 60}, "either deadline or deadline_in"),
        ({"deadline_in": 0}, "deadline_in must be a finite number >= 0 and non-zero"),
        ({"deadline_in": -5}, "deadline_in must be a finite number >= 0 and non-zero"),
        ({"deadline": dt.datetime(2030, 1, 1)}, "naive datetime"),
        ({"at": dt.datetime(2030, 1, 1)}, "naive datetime"),
        ({"at": float("nan")}, "at must be a datetime or epoch seconds"),
        ({"at": "tomorrow"}, "at must be a datetime or epoch seconds"),
    ],
)
def test_contradictory_or_malformed_times_are_refused(
    opts: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidOption, match=message):
        fields(**opts)


def test_a_start_at_the_deadline_itself_is_allowed() -> None:
    got = fields(delay=60, deadline_in=60)
    assert got["run_at"] == got["deadline"] == NOW + 60


async def test_the_task_api_takes_the_new_names(app: conveyor.App) -> None:
    @app.task
    async def t() -> None: ...

    now = time.time()
    job = await (await t.options(delay=dt.timedelta(seconds=5), deadline_in=60).enqueue()).get()
    assert job.run_at == pytest.approx(now + 5, abs=1)
    assert job.deadline == pytest.approx(now + 60, abs=1)
    with pytest.raises(InvalidOption, match="deadline_in"):
        await t.options(deadline=time.time() + 60).enqueue()  # type: ignore[arg-type]
    assert sum(q.total for q in await app.inspector.stats()) == 1
