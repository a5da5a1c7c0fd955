"""OpenTelemetry tracing across two processes: a producer process enqueues into a SQLite
file, a worker process runs the jobs; each dumps its finished spans (SDK in-memory exporter)
as JSON, and the test checks names, kinds, attributes, links, parents and statuses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import opentelemetry.sdk  # noqa: F401  (dev dependency: fail, never skip, without it)

APP = """
import asyncio, json, sys
import conveyor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from conveyor.observability.otel import instrument

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app = conveyor.App(sys.argv[1])
if sys.argv[3] == "on":
    instrument(app, tracer_provider=provider)

@app.task(queue="mail")
async def send(n: int) -> int:
    return n

@app.task(queue="mail", retry=conveyor.RetryPolicy(max_attempts=2, base_delay=0, jitter=0))
async def flaky() -> None:
    raise ValueError("boom")

def dump() -> None:
    out = [json.loads(s.to_json()) for s in exporter.get_finished_spans()]
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
"""

PRODUCE = (
    APP
    + """
async def main() -> None:
    async with app:
        await send.enqueue(1)
        await flaky.enqueue()
    dump()
asyncio.run(main())
"""
)

WORK = (
    APP
    + """
from conveyor.testing import drain
async def main() -> None:
    async with app:
        await drain(app, ["mail"])
    dump()
asyncio.run(main())
"""
)


def run(tmp_path: Path, script: str, name: str, url: str, mode: str = "on") -> list[dict]:  # type: ignore[type-arg]
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(script))
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, str(path), url, str(out), mode], check=True, timeout=60)
    spans: list[dict] = json.loads(out.read_text())  # type: ignore[type-arg]
    return spans


def test_consumer_spans_link_to_the_producer_span_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    sent = run(tmp_path, PRODUCE, "produce", url)
    done = run(tmp_path, WORK, "work", url)
    assert [s["name"] for s in sent] == ["send mail", "send mail"]
    assert {s["kind"] for s in sent} == {"SpanKind.PRODUCER"}
    by_id = {s["attributes"]["messaging.message.id"]: s for s in sent}
    for s in sent:
        assert s["attributes"]["messaging.system"] == "conveyor"
        assert s["attributes"]["messaging.destination.name"] == "mail"
        assert s["attributes"]["messaging.operation.type"] == "send"
    assert len(by_id) == 2
    assert all(s["name"] == "process mail" for s in done)
    assert {s["kind"] for s in done} == {"SpanKind.CONSUMER"}
    attempts: dict[str, list[int]] = {}
    for s in done:
        a = s["attributes"]
        assert a["messaging.operation.type"] == "process"
        producer = by_id[a["messaging.message.id"]]
        (link,) = s["links"]
        assert link["context"]["trace_id"] == producer["context"]["trace_id"]
        assert link["context"]["span_id"] == producer["context"]["span_id"]
        assert s["parent_id"] == producer["context"]["span_id"]  # child of it, too
        attempts.setdefault(a["conveyor.task"], []).append(a["conveyor.attempt"])
        if a["conveyor.task"].endswith("flaky"):
            assert s["status"]["status_code"] == "ERROR"
            assert any(e["name"] == "exception" for e in s["events"])
        else:
            assert s["status"]["status_code"] != "ERROR"
    flaky = next(t for t in attempts if t.endswith("flaky"))
    assert sorted(attempts[flaky]) == [1, 2]  # one consumer span per attempt


def test_tracing_off_adds_nothing_to_meta(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    check = (
        APP
        + """
async def main() -> None:
    async with app:
        h = await send.enqueue(1)
        (job,) = await app.backend.get([h.id])
        assert "traceparent" not in job.meta and "tracestate" not in job.meta, job.meta
asyncio.run(main())
"""
    )
    path = tmp_path / "off.py"
    path.write_text(check)
    subprocess.run(
        [sys.executable, str(path), url, str(tmp_path / "x"), "off"], check=True, timeout=60
    )


def test_instrument_without_the_api_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import conveyor\n"
        "from conveyor.errors import ConfigError\n"
        "from conveyor.observability.otel import instrument\n"
        "try:\n"
        "    instrument(conveyor.App('memory://'))\n"
        "except ConfigError as e:\n"
        "    assert \"pip install 'conveyor[otel]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ConfigError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
