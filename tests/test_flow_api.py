"""Flow control as a user writes it: `@app.task(concurrency=, rate_limit=, limit_key=,
circuit=, group=, group_weight=)`, the lanes and limits its jobs carry, `options(group=)`,
workflow signatures, and the inspector's lanes and circuits (memory store, fake clock)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.capabilities import LaneInfo
from conveyor.clock import FakeClock
from conveyor.errors import ConfigError, InvalidOption
from conveyor.inspector import held_back
from conveyor.job import Job


@pytest.fixture
async def app() -> AsyncIterator[conveyor.App]:
    application = conveyor.App("memory://", clock=FakeClock(1_000_000.0))
    yield application
    await application.aclose()


async def stored(app: conveyor.App) -> int:
    """Every job the store holds, whatever its state."""
    return sum(n for per in (await app.backend.counts()).values() for n in per.values())


async def job_of(app: conveyor.App, job_id: str) -> Job:
    (job,) = await app.backend.get([job_id])
    assert job is not None
    return job


def flow_of(job: Job) -> tuple[object, ...]:
    return (job.lane, job.weight, job.concurrency, job.rate, job.burst, job.circuit)


# -- the lane of each form -------------------------------------------------------------------


async def test_each_form_gives_its_lane_and_limits(app: conveyor.App) -> None:
    @app.task(rate_limit="100/s")
    async def call_partner(order_id: int) -> None: ...

    @app.task(concurrency=5)
    def render_pdf(doc_id: int) -> None: ...

    @app.task(concurrency=1, limit_key="{account_id}")
    async def sync_account(account_id: int, full: bool = False) -> None: ...

    @app.task(rate_limit="10/m", limit_key="acct-{account_id}")
    async def notify(account_id: int, text: str) -> None: ...

    @app.task(circuit=conveyor.Circuit(failure_rate=0.5, window=30, cooldown=60))
    async def push_crm(contact_id: int) -> None: ...

    @app.task(group="{tenant}", group_weight=3, concurrency=2)
    async def import_rows(tenant: str, batch: int) -> None: ...

    @app.task(rate_limit=conveyor.RateLimit(rate=2.5, burst=5))
    async def steady() -> None: ...

    @app.task
    async def plain(x: int) -> None: ...

    handles = [
        await call_partner.enqueue(1),
        await render_pdf.enqueue(2),
        await sync_account.enqueue(42),
        await notify.enqueue(text="hi", account_id=7),
        await push_crm.enqueue(3),
        await import_rows.enqueue("acme", 1),
        await steady.enqueue(),
        await plain.enqueue(1),
    ]
    jobs = [await job_of(app, h.id) for h in handles]
    assert [flow_of(j) for j in jobs] == [
        ("call_partner", 1, 0, 100.0, 100, ""),
        ("render_pdf", 1, 5, 0.0, 0, ""),
        ("sync_account:42", 1, 1, 0.0, 0, ""),
        ("notify:acct-7", 1, 0, 10 / 60, 10, ""),
        ("push_crm", 1, 0, 0.0, 0, "0.5:30:60:5"),
        ("acme", 3, 2, 0.0, 0, ""),
        ("steady", 1, 0, 2.5, 5, ""),
        ("", 1, 0, 0.0, 0, ""),
    ]
    assert call_partner.flow is not None and plain.flow is None


async def test_keys_resolve_from_defaults_keywords_and_each_call_of_many(
    app: conveyor.App,
) -> None:
    @app.task(concurrency=1, limit_key="{region}:{account_id}")
    async def sync(account_id: int, region: str = "eu") -> None: ...

    one = await sync.enqueue(account_id=5)
    many = await sync.enqueue_many([(1,), (2, "us"), {"account_id": 3, "region": "ap"}])
    lanes = [(await job_of(app, h.id)).lane for h in [one, *many]]
    assert lanes == ["sync:eu:5", "sync:eu:1", "sync:us:2", "sync:ap:3"]


def test_enqueue_sync_sets_the_lane_too() -> None:
    app = conveyor.App("memory://")

    @app.task(concurrency=1, limit_key="{doc_id}")
    def render_pdf(doc_id: int) -> None: ...

    handles = [render_pdf.enqueue_sync(7), render_pdf.options(priority=5).enqueue_sync(8)]
    jobs = app.registry.portal.call(app.backend.get([h.id for h in handles]))
    assert [(j.lane, j.concurrency) for j in jobs if j] == [
        ("render_pdf:7", 1),
        ("render_pdf:8", 1),
    ]
    with pytest.raises(InvalidOption, match="resolved to 'a b'"):
        app.task(group="{name}", name="named")(lambda name: None).enqueue_sync("a b")
    assert len(jobs) == 2 and app.registry.portal.call(app.backend.counts()) == {
        "default": {conveyor.JobState.QUEUED: 2}
    }

    app.close()


# -- options(group=, group_weight=) -----------------------------------------------------------


async def test_options_group_overrides_the_template_and_sets_the_weight(
    app: conveyor.App,
) -> None:
    @app.task(group="{tenant}", rate_limit="5/s")
    async def import_rows(tenant: str, batch: int) -> None: ...

    @app.task
    async def plain(x: int) -> None: ...

    over = await import_rows.options(group="acme", group_weight=2).enqueue("zeta", 1)
    weight_only = await import_rows.options(group_weight=4).enqueue("zeta", 2)
    own_group = await plain.options(group="batch-jobs", queue="low").enqueue(1)
    many = await import_rows.options(group="b2").enqueue_many([("x", 1), ("y", 2)])
    assert flow_of(await job_of(app, over.id)) == ("acme", 2, 0, 5.0, 5, "")
    assert flow_of(await job_of(app, weight_only.id)) == ("zeta", 4, 0, 5.0, 5, "")
    got = await job_of(app, own_group.id)
    assert (got.queue, *flow_of(got)) == ("low", "batch-jobs", 1, 0, 0.0, 0, "")
    assert [(await job_of(app, h.id)).lane for h in many] == ["b2", "b2"]
    # The task itself is unchanged.
    again = await import_rows.enqueue("zeta", 3)
    assert flow_of(await job_of(app, again.id)) == ("zeta", 1, 0, 5.0, 5, "")


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"group": "has space"}, "group 'has space' is not a valid group: use 1-255 characters"),
        ({"group": "x" * 256}, "is not a valid group"),
        ({"group": ""}, "group '' is not a valid group"),
        ({"group": 5}, "group must be a string, got 5"),
        ({"group": "a", "group_weight": 0}, "group_weight must be a whole number from 1 to 1000"),
        ({"group": "a", "group_weight": 1001}, "got 1001"),
        ({"group": "a", "group_weight": 1.5}, "got 1.5"),
        ({"group_weight": 2}, "group_weight=2 needs a group"),
    ],
)
async def test_bad_options_group_is_refused_before_any_write(
    app: conveyor.App, opts: dict[str, Any], message: str
) -> None:
    @app.task
    async def plain(x: int) -> None: ...

    with pytest.raises(InvalidOption) as info:
        await plain.options(**opts).enqueue(1)
    assert message in str(info.value) and "task 'plain'" in str(info.value)
    assert await stored(app) == 0


async def test_options_group_on_a_task_with_limit_key_is_refused(app: conveyor.App) -> None:
    @app.task(concurrency=1, limit_key="{account_id}")
    async def sync(account_id: int) -> None: ...

    with pytest.raises(InvalidOption, match="its lanes are per key, so it takes no group="):
        sync.options(group="acme")


# -- workflows --------------------------------------------------------------------------------


async def test_workflow_signatures_carry_their_lanes(app: conveyor.App) -> None:
    @app.task(concurrency=3)
    async def fetch(url: str) -> str:
        return url

    @app.task(concurrency=1, limit_key="{bucket}")
    async def store(text: str, bucket: str) -> None: ...

    @app.task(group="{tenant}")
    async def part(tenant: str, n: int) -> int:
        return n

    @app.task(rate_limit="1/s")
    async def total(values: list[int]) -> int:
        return sum(values)

    last = await conveyor.chain(fetch.s("u"), store.s(bucket="b1")).enqueue()
    stored_job = await job_of(app, last.id)
    (fetch_job,) = [await job_of(app, p) for p in stored_job.parents]
    assert (fetch_job.lane, fetch_job.concurrency) == ("fetch", 3)
    assert (stored_job.lane, stored_job.concurrency, stored_job.feed) == ("store:b1", 1, "one")

    members = await conveyor.group(
        [part.s("t1", 1), part.s("t2", 2).options(group="vip", group_weight=5)]
    ).enqueue()
    assert [flow_of(await job_of(app, h.id))[:2] for h in members.handles] == [
        ("t1", 1),
        ("vip", 5),
    ]
    callback = await conveyor.chord([part.s("t3", 3)], total.s()).enqueue()
    cb = await job_of(app, callback.id)
    assert (cb.lane, cb.rate, cb.burst, cb.feed) == ("total", 1.0, 1, "all")
    bound = await conveyor.chain(fetch.options(queue="q2").s("v")).enqueue()
    assert (await job_of(app, bound.id)).lane == "fetch"


async def test_a_fed_parameter_can_not_name_the_lane(app: conveyor.App) -> None:
    @app.task
    async def fetch(url: str) -> int:
        return 1

    @app.task(concurrency=1, limit_key="{account_id}")
    async def sync(account_id: int) -> None: ...

    with pytest.raises(InvalidOption, match="names 'account_id', which receives the previous"):
        conveyor.chain(fetch.s("u"), sync.s())
    assert await stored(app) == 0


# -- bad input at decoration ------------------------------------------------------------------


def circuit(**kwargs: Any) -> conveyor.Circuit:
    return conveyor.Circuit(**{"failure_rate": 0.5, "window": 30, "cooldown": 60, **kwargs})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be a whole number >= 1 (its jobs running at once"),
        ({"concurrency": -3}, "concurrency must be a whole number >= 1"),
        ({"concurrency": True}, "got True"),
        ({"concurrency": 2.5}, "got 2.5"),
        ({"rate_limit": "100/parsec"}, "rate limit '100/parsec' has an unknown unit 'parsec'"),
        ({"rate_limit": "0/s"}, "rate limit '0/s' lets nothing through"),
        ({"rate_limit": "fast"}, "rate limit 'fast' is not valid: use '<count>/<unit>'"),
        ({"rate_limit": 100}, "rate limit must be a string like '100/s', got 100"),
        ({"circuit": 0.5}, "circuit takes a conveyor.Circuit(failure_rate=..., window=..."),
        (
            {"concurrency": 1, "limit_key": "account"},
            "limit_key: key template 'account' names no parameter",
        ),
        (
            {"concurrency": 1, "limit_key": "{acount_id}"},
            "names 'acount_id', which is not a parameter of the task (its parameters: "
            "account_id, text)",
        ),
        ({"concurrency": 1, "limit_key": "{account_id!r}"}, "must be a plain parameter name"),
        ({"concurrency": 1, "limit_key": "a b{account_id}"}, "the text 'a b' can't be part"),
        ({"concurrency": 1, "limit_key": "{rest}"}, "not a parameter of the task"),
        ({"group": "tenant"}, "group: key template 'tenant' names no parameter"),
        ({"group": "{tenant}"}, "names 'tenant', which is not a parameter"),
        ({"limit_key": "{account_id}"}, "limit_key='{account_id}' limits nothing on its own"),
        (
            {"concurrency": 2, "limit_key": "{account_id}", "group": "{text}"},
            "give group= or limit_key=, not both: with group= the task's limits apply per group",
        ),
        ({"group_weight": 2}, "group_weight=2 needs group="),
        ({"group": "{text}", "group_weight": 0}, "group_weight must be a whole number from 1"),
        ({"group": "{text}", "group_weight": 1001}, "got 1001"),
        ({"group": "{text}", "group_weight": False}, "got False"),
    ],
)
def test_bad_flow_options_are_refused_at_decoration(
    app: conveyor.App, options: dict[str, Any], message: str
) -> None:
    def notify(account_id: int, text: str) -> None: ...

    with pytest.raises(ConfigError) as info:
        app.task(**options)(notify)
    assert message in str(info.value), str(info.value)
    assert "task 'notify'" in str(info.value)
    assert app.registry.find("notify") is None  # nothing registered


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate": 1.5}, "failure_rate must be in (0, 1]"),
        ({"window": 0}, "window must be a finite number of seconds > 0"),
        ({"window": -1}, "window must be a finite number of seconds > 0"),
        ({"cooldown": 0}, "cooldown must be a finite number of seconds > 0"),
        ({"cooldown": -60}, "cooldown must be a finite number of seconds > 0"),
    ],
)
def test_a_bad_circuit_is_refused_before_the_task_exists(
    app: conveyor.App, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):

        @app.task(circuit=circuit(**kwargs))
        async def push_crm(contact_id: int) -> None: ...

    assert app.registry.find("push_crm") is None


def test_batch_tasks_refuse_flow_options(app: conveyor.App) -> None:
    def index(items: list[str]) -> list[str]:
        return items

    decorate: Any = app.task  # the batch overload takes no flow options: mypy says so too
    with pytest.raises(ConfigError, match="batch task 'index' can't take concurrency=, group="):
        decorate(batch=conveyor.Batch(), concurrency=2, group="{items}")(index)
    assert app.registry.find("index") is None


# -- bad values at enqueue: nothing written ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("has space", "resolved to 'has space': a key must be 1-255 characters from"),
        ("", "resolved to ''"),
        ("ü", "resolved to 'ü'"),
        ("x" * 256, "a key must be 1-255 characters"),
        (None, "parameter 'tenant' is None (NoneType); a key takes strings, integers"),
        (1.5, "is 1.5 (float)"),
        (True, "is True (bool)"),
    ],
)
async def test_a_group_resolving_to_a_bad_value_writes_nothing(
    app: conveyor.App, value: object, message: str
) -> None:
    @app.task(group="{tenant}")
    async def import_rows(tenant: Any, batch: int) -> None: ...

    with pytest.raises(InvalidOption) as info:
        await import_rows.enqueue(value, 1)
    assert message in str(info.value) and "task 'import_rows': group:" in str(info.value)
    with pytest.raises(InvalidOption):  # one bad call of many: none is written
        await import_rows.enqueue_many([("ok", 1), (value, 2)])
    with pytest.raises(InvalidOption):
        import_rows.enqueue_sync(value, 1)
    assert await stored(app) == 0


async def test_a_limit_key_too_long_for_a_lane_writes_nothing(app: conveyor.App) -> None:
    @app.task(concurrency=1, limit_key="{account}", name="t" * 200)
    async def sync(account: str) -> None: ...

    await sync.enqueue("k" * 54)  # 200 + 1 + 54 = 255: fits
    with pytest.raises(InvalidOption) as info:
        await sync.enqueue("k" * 55)
    assert "of 256 characters: a lane (task name, ':', key) must be at most 255" in str(info.value)
    with pytest.raises(InvalidOption, match="resolved to 'a/b c'"):
        await sync.enqueue("a/b c")
    assert await stored(app) == 1


# -- the inspector ---------------------------------------------------------------------------


async def test_inspector_lists_lanes_and_opens_and_closes_circuits(
    app: conveyor.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(concurrency=2, circuit=circuit(min_calls=3))
    async def push_crm(contact_id: int) -> None: ...

    @app.task(rate_limit="10/m", limit_key="{account_id}", queue="low")
    async def notify(account_id: int) -> None: ...

    await push_crm.enqueue_many([(i,) for i in range(4)])
    await notify.enqueue(7)
    claimed = await app.backend.claim(ClaimRequest(["default"], 5, 30.0, "w"))
    assert len(claimed) == 2  # the concurrency limit
    lanes = await app.inspector.lanes()
    assert [(lane.queue, lane.lane) for lane in lanes] == [
        ("default", "push_crm"),
        ("low", "notify:7"),
    ]
    crm, note = lanes
    assert (crm.ready, crm.running, crm.concurrency, crm.circuit) == (2, 2, 2, "0.5:30:60:3")
    assert held_back(crm) and not held_back(note)
    assert (note.rate, note.burst, note.tokens) == (10 / 60, 10, 10)
    assert [lane.lane for lane in await app.inspector.lanes("low")] == ["notify:7"]
    counts = await app.inspector.lane_counts()
    assert [(c.queue, c.lanes, c.held, c.open) for c in counts] == [
        ("default", 1, 1, 0),
        ("low", 1, 0, 0),
    ]

    change = await app.inspector.open_circuit("notify:7", queue="low", duration=60)
    assert (change.previous, change.state, change.known) == ("closed", "open", True)
    assert change.until == app.clock.now() + 60
    (note,) = await app.inspector.lanes("low")
    assert note.circuit_state == "open" and held_back(note)
    assert await app.backend.claim(ClaimRequest(["low"], 5, 30.0, "w")) == []
    by_hand = await app.inspector.open_circuit("notify:7", queue="low")
    assert (by_hand.previous, by_hand.until) == ("open", None)
    closed = await app.inspector.close_circuit("notify:7", queue="low")
    assert (closed.previous, closed.state, closed.until) == ("open", "closed", None)
    assert len(await app.backend.claim(ClaimRequest(["low"], 5, 30.0, "w"))) == 1

    with caplog.at_level(logging.WARNING, logger="conveyor.inspector"):
        typo = await app.inspector.open_circuit("push_cmr")
    assert not typo.known and "'push_cmr'" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.open_circuit("a b"), "invalid lane 'a b': use 1-255 characters"),
        (lambda i: i.open_circuit(""), "lane must be a non-empty string"),
        (lambda i: i.open_circuit("x", queue="no queue"), "invalid queue name 'no queue'"),
        (lambda i: i.open_circuit("x", duration=0), "duration must be a number of seconds > 0"),
        (lambda i: i.open_circuit("x", duration=-5), "got -5"),
        (lambda i: i.close_circuit("x" * 256), "invalid lane"),
        (lambda i: i.lanes("bad queue"), "invalid queue name"),
    ],
)
async def test_inspector_refuses_bad_circuit_changes(
    app: conveyor.App, call: Any, message: str
) -> None:
    with pytest.raises(InvalidOption, match=message.replace("(", r"\(")):
        await call(app.inspector)
    assert await app.inspector.lanes() == []  # nothing created


def test_held_back_reads_each_limit() -> None:
    base = LaneInfo(queue="q", lane="l", ready=1)
    assert not held_back(base)
    assert held_back(LaneInfo(queue="q", lane="l", ready=1, running=2, concurrency=2))
    assert held_back(LaneInfo(queue="q", lane="l", ready=1, rate=1.0, burst=1, tokens=0.5))
    assert held_back(LaneInfo(queue="q", lane="l", ready=1, circuit_state="open"))
    assert held_back(LaneInfo(queue="q", lane="l", ready=1, running=1, circuit_state="half_open"))
    assert not held_back(LaneInfo(queue="q", lane="l", ready=1, circuit_state="half_open"))
    assert not held_back(LaneInfo(queue="q", lane="l", ready=0, circuit_state="open"))
