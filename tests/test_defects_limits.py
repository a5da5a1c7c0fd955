"""Size and nesting limits: deep arguments, large meta, results and error text are bounded,
with a clear error at enqueue or a clear failure in the worker, and nothing else lost."""

from __future__ import annotations

import dataclasses
import re

import pytest

import conveyor
from conveyor.errors import InvalidArguments, InvalidOption
from conveyor.job import JobState
from conveyor.producer import MAX_META, JobOptions, build_jobs
from conveyor.serde import MAX_DEPTH, MAX_RESULT, nested_deeper_than
from conveyor.testing import drain
from conveyor.worker.execute import MAX_ERROR_MESSAGE, MAX_TRACEBACK


def nest(levels: int) -> list[object]:
    """A list nested `levels` deep: nest(1) == [], nest(2) == [[]]."""
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


async def count(app: conveyor.App) -> int:
    return sum(q.total for q in await app.inspector.stats())


def test_nesting_is_measured_in_levels_of_containers() -> None:
    assert not nested_deeper_than(1, 0)
    assert not nested_deeper_than(nest(3), 3)
    assert nested_deeper_than(nest(4), 3)
    assert nested_deeper_than({"a": [{"b": (1,)}]}, 3)  # dict, list, dict, tuple
    assert not nested_deeper_than([1] * 100_000 + [[2]], 2)
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert nested_deeper_than(cyclic, MAX_DEPTH)  # ends, and says so


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1_000, 100_000])
async def test_deep_arguments_are_invalid_and_nothing_is_written(
    app: conveyor.App, levels: int
) -> None:
    @app.task
    async def typed(data: list[object], n: int = 0) -> None: ...

    @app.task
    async def untyped(n, data):  # type: ignore[no-untyped-def]
        ...

    message = f"task 'typed': argument 'data' nests deeper than {MAX_DEPTH} levels"
    with pytest.raises(InvalidArguments, match=re.escape(message)):
        await typed.enqueue(nest(levels))
    with pytest.raises(InvalidArguments, match="task 'untyped': argument 'data' nests deeper"):
        await untyped.enqueue(1, data={"k": nest(levels)})
    with pytest.raises(InvalidArguments, match="argument 'data'"):
        await typed.enqueue_many([(nest(2),), (nest(levels),)])
    assert await count(app) == 0


async def test_arguments_at_the_nesting_limit_run(app: conveyor.App) -> None:
    @app.task
    async def depth(data: list[object]) -> int:
        n = 0
        while isinstance(data, list) and data:
            data, n = data[0], n + 1  # type: ignore[assignment]
        return n + 1

    h = await depth.enqueue(nest(MAX_DEPTH))
    await drain(app)
    assert await h.result(timeout=5) == MAX_DEPTH


@dataclasses.dataclass
class Node:
    child: Node | None = None


async def test_deep_values_the_walk_cannot_see_still_fail_clearly(app: conveyor.App) -> None:
    @app.task
    async def tree(root: Node) -> None: ...

    root = Node()
    for _ in range(5_000):
        root = Node(root)
    with pytest.raises(InvalidArguments, match="argument 'root' nests deeper"):
        await tree.enqueue(root)
    assert await count(app) == 0


async def test_a_stored_payload_too_deep_to_decode_fails_alone(app: conveyor.App) -> None:
    @app.task
    async def take(data: object) -> None: ...

    deep = b'{"data":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    (poison,) = build_jobs("take", [deep], JobOptions(), app.clock.now())
    await app.producer.enqueue([poison])
    good = await take.enqueue([1])
    await drain(app)
    (job,) = await app.backend.get([poison.id])
    assert job is not None and job.state is JobState.FAILED
    assert job.errors[-1].type == "PoisonPayload"
    assert (await good.get()).state is JobState.COMPLETED


async def test_meta_over_its_limit_is_refused(app: conveyor.App) -> None:
    @app.task
    async def t() -> None: ...

    with pytest.raises(InvalidOption, match=rf"meta is \d+ bytes encoded, over .* {MAX_META}"):
        await t.options(meta={"blob": "x" * (3 << 20)}).enqueue()
    with pytest.raises(InvalidOption, match="meta nests deeper than"):
        await t.options(meta={"deep": nest(MAX_DEPTH + 1)}).enqueue()
    with pytest.raises(InvalidOption, match="meta is not JSON-serializable"):
        await t.options(meta={"x": object()}).enqueue()
    assert await count(app) == 0
    h = await t.options(meta={"blob": "x" * (MAX_META - 100)}).enqueue()
    assert len((await h.get()).meta["blob"]) == MAX_META - 100  # type: ignore[arg-type]


async def test_a_result_over_its_limit_fails_the_job(app: conveyor.App) -> None:
    @app.task
    async def big() -> str:
        return "x" * MAX_RESULT

    @app.task
    async def deep() -> list[object]:
        return nest(2_000)

    @app.task
    async def fits() -> str:
        return "x" * (MAX_RESULT - 2)  # the quotes make it exactly the limit

    handles = [await big.enqueue(), await deep.enqueue(), await fits.enqueue()]
    await drain(app)
    big_job, deep_job, fits_job = [await h.get() for h in handles]
    assert big_job.state is JobState.FAILED and big_job.result is None
    assert big_job.errors[-1].type == "ResultTooLarge"
    assert f"over the maximum of {MAX_RESULT}" in big_job.errors[-1].message
    assert deep_job.state is JobState.FAILED
    assert deep_job.errors[-1].type == "ResultNotSerializable"
    assert "nests deeper than" in deep_job.errors[-1].message
    assert fits_job.state is JobState.COMPLETED


async def test_error_messages_and_tracebacks_are_cut_and_marked(app: conveyor.App) -> None:
    text = "é" * 10_000  # 2 bytes each: the cut must not split one

    @app.task(retry=conveyor.RetryPolicy(max_attempts=1))
    async def loud() -> None:
        raise ValueError(text)

    @app.task(retry=conveyor.RetryPolicy(max_attempts=1))
    async def short() -> None:
        raise ValueError("brief")

    h1, h2 = await loud.enqueue(), await short.enqueue()
    await drain(app)
    (e1,) = (await h1.get()).errors
    kept, marker = e1.message.split("…")
    assert kept == "é" * (MAX_ERROR_MESSAGE // 2)
    assert marker == f" (truncated {len(text.encode()) - MAX_ERROR_MESSAGE} bytes)"
    head, tail = e1.traceback.split("\n", 1)
    assert re.fullmatch(r"… \(truncated \d+ bytes\)", head)
    assert len(tail.encode()) <= MAX_TRACEBACK
    assert tail.rstrip().endswith("é" * 100)  # the end kept: where the error is
    (e2,) = (await h2.get()).errors
    assert e2.message == "brief" and "truncated" not in e2.traceback
    assert e2.traceback.startswith("Traceback (most recent call last)")
