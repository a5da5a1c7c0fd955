"""OpenTelemetry tracing for conveyor jobs (extra ``conveyor[otel]``).

Turn it on with ``instrument(app)``: each enqueue gets a PRODUCER span ``send {queue}``
(one per job) whose W3C trace context is stored in ``Job.meta`` (``traceparent``,
``tracestate``); each attempt gets a CONSUMER span ``process {queue}`` that is a CHILD of,
and LINKED to, that context. Attributes follow the messaging semantic conventions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import msgspec

from conveyor.errors import ConfigError
from conveyor.job import Job
from conveyor.worker.context import JobInfo

__all__ = ["instrument"]


class _Producer(Protocol):
    before_enqueue: tuple[Callable[[Sequence[Job]], Sequence[Job]], ...]


class _Hooks(Protocol):
    def add_middleware(self, fn: Any) -> Any: ...


class Instrumentable(Protocol):
    """What `instrument` needs of an app (typed structurally: observability sits below app)."""

    producer: _Producer
    hooks: _Hooks


def instrument(app: Instrumentable, tracer_provider: Any = None) -> None:
    """Trace `app`'s enqueues and job attempts with OpenTelemetry.

    Raises:
        ConfigError: ``opentelemetry-api`` is not installed.
    """
    try:
        from opentelemetry import context, propagate, trace
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ConfigError("tracing needs OpenTelemetry: pip install 'conveyor[otel]'") from e
    tracer = trace.get_tracer("conveyor", tracer_provider=tracer_provider)

    def inject(jobs: Sequence[Job]) -> Sequence[Job]:
        out = []
        for job in jobs:
            attrs = {
                "messaging.system": "conveyor",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "messaging.operation.type": "send",
                "conveyor.task": job.task,
            }
            with tracer.start_as_current_span(
                f"send {job.queue}", kind=trace.SpanKind.PRODUCER, attributes=attrs
            ):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
            out.append(msgspec.structs.replace(job, meta={**job.meta, **carrier}))
        return out

    @contextlib.asynccontextmanager
    async def middleware(job: JobInfo) -> AsyncIterator[None]:
        carrier = {k: str(v) for k, v in job.meta.items() if k in ("traceparent", "tracestate")}
        parent = propagate.extract(carrier)
        link_ctx = trace.get_current_span(parent).get_span_context()
        links = [trace.Link(link_ctx)] if link_ctx.is_valid else []
        attrs: dict[str, str | int] = {
            "messaging.system": "conveyor",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "messaging.operation.type": "process",
            "conveyor.task": job.task,
            "conveyor.attempt": job.attempt,
        }
        token = context.attach(parent)
        try:
            with tracer.start_as_current_span(
                f"process {job.queue}",
                kind=trace.SpanKind.CONSUMER,
                links=links,
                attributes=attrs,
            ):
                yield  # record_exception and status ERROR are start_as_current_span's defaults
        finally:
            context.detach(token)

    app.producer.before_enqueue = (*app.producer.before_enqueue, inject)
    app.hooks.add_middleware(middleware)
