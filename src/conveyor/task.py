"""Typed tasks and their registry: `Task[P, R]` wraps a function; calling it runs it,
`.enqueue()` makes a job; the `Registry` finds tasks by name for workers."""

from __future__ import annotations

import contextvars
import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, Unpack

import msgspec

from conveyor.errors import (
    ConfigError,
    DependencyError,
    InvalidArguments,
    InvalidOption,
    UnknownTask,
)
from conveyor.handle import JobHandle
from conveyor.job import Job
from conveyor.names import check_task_name
from conveyor.portal import Portal
from conveyor.producer import JobOptions, OptionsDict, Producer, build_jobs
from conveyor.retry import RetryPolicy
from conveyor.serde import ArgsCodec
from conveyor.taskflow import FlowOptionsDict, TaskFlow

__all__ = [
    "AsyncTask",
    "Batch",
    "BatchTask",
    "BoundTask",
    "Registry",
    "Signature",
    "SyncTask",
    "Task",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Call = tuple[object, ...] | Mapping[str, object]


class Registry:
    """Registered tasks by name, plus what they need to enqueue.

    Args:
        producer: where enqueues go.
        max_payload: largest encoded argument payload accepted, in bytes.
    """

    def __init__(self, producer: Producer, max_payload: int = 1 << 20) -> None:
        self.producer = producer
        self.max_payload = max_payload
        self.portal = Portal()
        self._tasks: dict[str, Task[..., object]] = {}

    def add(self, task: Task[..., object]) -> None:
        """Register `task`; a second task with the same name is a `ConfigError`."""
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigError(
                f"a task named {task.name!r} is already registered ({existing.fn.__module__}."
                f"{existing.fn.__qualname__}); give one of them another name: "
                "@app.task(name='...')"
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[..., object]:
        """The task registered as `name`, or `UnknownTask`."""
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} is registered (known: {known})") from None

    def find(self, name: str) -> Task[..., object] | None:
        """The task registered as `name`, or `None`."""
        return self._tasks.get(name)

    def __iter__(self) -> Iterator[Task[..., object]]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)


class Task(Generic[P, R]):
    """A registered task. Create one with `@app.task`.

    Calling the task runs the function here and now; `enqueue` stores a job for a worker.

    Attributes:
        name: the registered name (the function's name unless given).
        fn: the function.
        retry: its `RetryPolicy`.
        defaults: its default `JobOptions` (queue, timeout, max_attempts, ...).
    """

    is_async: bool = False
    batch: Batch | None = None
    #: Its flow options (lane, limits, circuit, group), `None` without any.
    flow: TaskFlow | None = None

    def __init__(
        self,
        registry: Registry,
        fn: Callable[P, object],
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        defaults: JobOptions | None = None,
    ) -> None:
        self.registry = registry
        self.fn = fn
        self.name = check_task_name(name or fn.__name__)
        self.retry = retry or RetryPolicy()
        self.defaults = JobOptions(max_attempts=self.retry.max_attempts).merged(
            defaults or JobOptions()
        )
        self.codec = ArgsCodec(fn, self.name, registry.max_payload)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def options(
        self,
        *,
        group: str | None = None,
        group_weight: int | None = None,
        **opts: Unpack[OptionsDict],
    ) -> BoundTask[P, R]:
        """This task with job options for the next enqueue. `group` puts the job in
        that group (its value, replacing the task's ``group=`` template), `group_weight`
        sets the group's weight (1-1000).

        Example:
            await send_email.options(delay=60, key="welcome:42").enqueue("a@b.c", "hi")
            await import_rows.options(group="acme", group_weight=2).enqueue("acme", 1)
        """
        merged = self.defaults.merged(JobOptions.from_dict(opts))
        return BoundTask(self, merged, with_group(self.name, self.flow, group, group_weight))

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A call of this task to make later, as a step of `conveyor.chain`, a member of a
        `conveyor.group` or `conveyor.chord`, or a batch's callback. Checked against the
        task's parameters now (a chain step after the first, and a chord's callback, get
        the previous result as their first argument: leave it out here).

        Example:
            await conveyor.chain(fetch.s(url), parse.s(), store.s(bucket="b")).enqueue()
        """
        return Signature(self, args, kwargs, self.defaults, self.flow)

    def _job(
        self,
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        opts: JobOptions,
        flow: TaskFlow | None = None,
    ) -> Job:
        check_after(self.registry, opts)
        payload = self.codec.encode(args, kwargs)
        (job,) = build_jobs(self.name, [payload], opts, self.registry.producer.clock.now())
        flow = flow or self.flow
        if flow is None:
            return job
        return msgspec.structs.replace(job, **flow_fields(self.codec, flow, args, kwargs))

    async def _store(self, jobs: list[Job]) -> list[JobHandle[R]]:
        # For a duplicate key the store answers with the id of the job holding it: the
        # handle points there.
        ids = await write_jobs(self.registry, jobs)
        backend, portal = self.registry.producer.backend, self.registry.portal
        rtype = self.codec.return_type
        return [
            JobHandle(backend, portal, got, self.name, rtype, got == job.id)
            for job, got in zip(jobs, ids, strict=True)
        ]

    async def _enqueue(
        self,
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        opts: JobOptions,
        flow: TaskFlow | None = None,
    ) -> JobHandle[R]:
        (handle,) = await self._store([self._job(args, kwargs, opts, flow)])
        return handle

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Store a job that runs this task with these arguments; returns its handle.

        Raises:
            InvalidArguments, SerializationError, PayloadTooLarge, InvalidOption: bad input;
                nothing was stored.
        """
        return await self._enqueue(args, kwargs, self.defaults)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """`enqueue` for synchronous code (Django views, Flask, scripts)."""
        job = self._job(args, kwargs, self.defaults)  # validate here, in the caller's thread
        (handle,) = self.registry.portal.call(self._store([job]))
        return handle

    async def enqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[R]]:
        """Store many jobs in one round trip. Each call is a tuple of positional arguments or
        a mapping of keyword arguments. All are validated before any is stored.

        Example:
            await send_email.enqueue_many([("a@b.c", "hi"), {"to": "d@e.f", "subject": "yo"}])
        """
        return await self._store(self._jobs(calls, self.defaults))

    def _jobs(
        self, calls: Iterable[Call], opts: JobOptions, flow: TaskFlow | None = None
    ) -> list[Job]:
        check_after(self.registry, opts)
        payloads: list[bytes] = []
        encode = self.codec.encode
        flow = flow or self.flow
        if flow is not None:
            calls = list(calls)  # read twice: the payloads, then the lanes
        for i, call in enumerate(calls):
            try:
                if isinstance(call, tuple):
                    payloads.append(encode(call, {}))
                elif isinstance(call, Mapping):
                    payloads.append(encode((), call))
                else:
                    raise InvalidArguments(
                        f"task {self.name!r}: each call must be a tuple of positional "
                        f"arguments or a mapping of keyword arguments, got {type(call).__name__}"
                    )
            except InvalidArguments as exc:
                raise type(exc)(f"call #{i}: {exc}") from None
        jobs = build_jobs(self.name, payloads, opts, self.registry.producer.clock.now())
        if flow is None:
            return jobs
        replace, codec = msgspec.structs.replace, self.codec
        out: list[Job] = []
        for i, (job, call) in enumerate(zip(jobs, calls, strict=True)):
            args, kwargs = (call, {}) if isinstance(call, tuple) else ((), call)
            try:
                out.append(replace(job, **flow_fields(codec, flow, args, kwargs)))
            except InvalidOption as exc:
                raise InvalidOption(f"call #{i}: {exc}") from None
        return out


class SyncTask(Task[P, R]):
    """A task whose function is synchronous; workers run it in a thread pool."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)  # type: ignore[return-value]


class AsyncTask(Task[P, R]):
    """A task whose function is a coroutine function; workers run it on the event loop."""

    is_async = True

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[object, object, R]:
        return self.fn(*args, **kwargs)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Batch:
    """Makes a task a durable *batch task*: its handler takes a list of items.

    Each item is its own job (own lease, attempts, retries, dead letter and result); a worker
    gathers up to `max_size` claimed jobs of the task, waiting at most `max_wait` seconds
    for a fuller batch, and calls the handler once with their items. The handler returns one
    result per item, in order; an `Exception` instance in place of a result fails (or
    retries) that item alone.

    A worker holds each waiting job in one of its `concurrency` slots, so give workers of
    batch tasks a concurrency of at least `max_size` × `max_concurrency`.

    Example:
        @app.task(batch=conveyor.Batch(max_size=100, max_wait=0.05))
        async def index(docs: list[Doc]) -> list[str | Exception]: ...

        await index.enqueue(Doc(...))     # one job per item
    """

    max_size: int = 100
    max_wait: float = 0.05
    max_concurrency: int = 1

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ConfigError(f"Batch.max_size must be >= 1, got {self.max_size}")
        if self.max_wait < 0:
            raise ConfigError(f"Batch.max_wait must be >= 0, got {self.max_wait}")
        if self.max_concurrency < 1:
            raise ConfigError(f"Batch.max_concurrency must be >= 1, got {self.max_concurrency}")


class BatchTask(Task[[T], R]):
    """A durable batch task (see `Batch`). `enqueue(item)` stores one job per item; calling
    the task runs the handler here on a list of items."""

    def __init__(
        self,
        registry: Registry,
        fn: Callable[[list[T]], object],
        *,
        batch: Batch,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        defaults: JobOptions | None = None,
    ) -> None:
        self.batch = batch
        self.is_async = inspect.iscoroutinefunction(fn)
        item_type = _item_type(fn)

        def item(item: T) -> None:  # the shape of one job's arguments
            """One item of the batch."""

        item.__annotations__ = {"item": item_type, "return": None}
        super().__init__(registry, item, name=name or fn.__name__, retry=retry, defaults=defaults)
        # The codec was built from the item shape above; from here on `fn` is the user's
        # handler (registry messages and introspection name it).
        self.handler = fn
        self.fn = fn  # type: ignore[assignment]
        self.__wrapped__ = fn  # type: ignore[assignment]
        self.__doc__ = fn.__doc__

    def __call__(self, items: list[T]) -> object:
        return self.handler(items)


def _item_type(fn: Callable[..., object]) -> object:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 1 or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise ConfigError(
            f"batch task {fn.__name__!r} must take exactly one positional parameter: the list "
            "of items (e.g. def handler(items: list[Item]) -> list[Result])"
        )
    try:
        hint = typing.get_type_hints(fn).get(params[0].name, Any)
    except Exception:
        return Any
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) in (list, Sequence) and args else Any


class BoundTask(Generic[P, R]):
    """A task with job options fixed for the next enqueue (from `Task.options`)."""

    def __init__(self, task: Task[P, R], opts: JobOptions, flow: TaskFlow | None = None) -> None:
        self.task = task
        self.opts = opts
        self.flow = flow

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue with these options. See `Task.enqueue`."""
        return await self.task._enqueue(args, kwargs, self.opts, self.flow)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue from synchronous code with these options."""
        job = self.task._job(args, kwargs, self.opts, self.flow)
        (handle,) = self.task.registry.portal.call(self.task._store([job]))
        return handle

    async def enqueue_many(self, calls: Iterable[Call]) -> list[JobHandle[R]]:
        """Enqueue many with these options. See `Task.enqueue_many`."""
        return await self.task._store(self.task._jobs(calls, self.opts, self.flow))

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A later call with these options. See `Task.s`."""
        return Signature(self.task, args, kwargs, self.opts, self.flow)


class Signature(Generic[R]):
    """A call of a task to make later (from `Task.s`): a workflow's building block.

    Attributes:
        task: the task.
        args: its positional arguments (without the fed first one, for a fed step).
        kwargs: its keyword arguments.
        opts: its job options.
        flow: its flow options (the task's, or with the group of `options`), if any.
    """

    __slots__ = ("args", "flow", "kwargs", "opts", "task")

    def __init__(
        self,
        task: Task[..., R],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        opts: JobOptions,
        flow: TaskFlow | None = None,
    ) -> None:
        if task.batch is not None:
            raise ConfigError(
                f"batch task {task.name!r} can't be part of a workflow: enqueue its items and "
                "use after= on the jobs that wait for them"
            )
        try:
            task.codec.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"task {task.name!r}: {exc}") from None
        self.task, self.args, self.kwargs, self.opts = task, args, dict(kwargs), opts
        self.flow = flow

    def __repr__(self) -> str:
        shown = [*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        return f"{self.task.name}.s({', '.join(shown)})"

    def options(
        self,
        *,
        group: str | None = None,
        group_weight: int | None = None,
        **opts: Unpack[OptionsDict],
    ) -> Signature[R]:
        """This call with job options (merged over its own); `group` and `group_weight`
        as in `Task.options`."""
        flow = with_group(self.task.name, self.flow, group, group_weight)
        merged = self.opts.merged(JobOptions.from_dict(opts))
        return Signature(self.task, self.args, self.kwargs, merged, flow)

    def job(
        self, now: float, parents: tuple[str, ...] = (), feed: str = "", policy: str | None = None
    ) -> Job:
        """Its `Job` record: waiting on `parents` (added to its own ``after=``), fed by them
        as `feed` says (``"one"``: the parent's result first; ``"all"``: their list)."""
        codec = self.task.codec
        check_after(self.task.registry, self.opts)
        payload = (
            codec.encode_fed(self.args, self.kwargs)
            if feed
            else codec.encode(self.args, self.kwargs)
        )
        (job,) = build_jobs(self.task.name, [payload], self.opts, now)
        if self.flow is not None:
            lane = flow_fields(codec, self.flow, self.args, self.kwargs, fed=bool(feed))
            job = msgspec.structs.replace(job, **lane)
        if not (parents or feed or policy):
            return job
        own = tuple(p for p in job.parents if p not in parents)
        return msgspec.structs.replace(
            job,
            parents=(*parents, *own),
            feed=feed,
            on_parent_failure=policy or job.on_parent_failure,
        )

    def handle(self, job_id: str, created: bool = True) -> JobHandle[R]:
        """A handle on the job `job_id` of this call."""
        registry = self.task.registry
        return JobHandle(
            registry.producer.backend, registry.portal, job_id, self.task.name,
            self.task.codec.return_type, created,
        )  # fmt: skip


def with_group(
    task: str, flow: TaskFlow | None, group: str | None, group_weight: int | None
) -> TaskFlow | None:
    """`flow` with the group and weight of ``options(group=, group_weight=)``, if given
    (a task without flow options gets a flow of that group alone). Raises `InvalidOption`."""
    if group is None and group_weight is None:
        return flow
    if flow is None:
        flow = TaskFlow(task) if group is None else TaskFlow(task, group=group)
    return flow.with_group(group, group_weight)


def flow_fields(
    codec: ArgsCodec,
    flow: TaskFlow,
    args: tuple[object, ...],
    kwargs: Mapping[str, object],
    *,
    fed: bool = False,
) -> dict[str, object]:
    """The `Job` fields `flow` gives one call (its arguments already checked; `fed`:
    its first parameter comes from the parents' results at run time). Raises
    `InvalidOption` for a key that can't be resolved."""
    if not flow.templates:
        return flow.fields(None)
    if fed:
        first = codec.fed_parameter
        for option, template in flow.templates:
            if first in template.fields:
                raise InvalidOption(
                    f"task {codec.name!r}: {option} {template.template!r} names {first!r}, "
                    "which receives the previous result at run time; a lane is chosen at "
                    "enqueue, so name another parameter"
                )
        args = (None, *args)
    bound = inspect.BoundArguments(codec.signature, codec.bind(args, kwargs))
    return flow.fields(bound)


def make_task(
    registry: Registry,
    fn: Callable[P, object],
    *,
    name: str | None,
    retry: RetryPolicy | None,
    defaults: JobOptions,
    batch: Batch | None = None,
    flow: FlowOptionsDict | None = None,
) -> Task[P, object]:
    """Wrap `fn` in the right kind of task (with its flow options, see
    `conveyor.taskflow`) and register it."""
    given = [k for k, v in (flow or {}).items() if v is not None]
    if batch is not None:
        if given:
            raise ConfigError(
                f"batch task {name or fn.__name__!r} can't take {'=, '.join(given)}=: a worker "
                "gathers its claimed jobs into batches, so a limit would count items held "
                "for a batch, not handler calls; limit the task its handler calls instead"
            )
        btask: BatchTask[object, object] = BatchTask(
            registry,
            fn,  # type: ignore[arg-type]
            batch=batch,
            name=name,
            retry=retry,
            defaults=defaults,
        )
        registry.add(btask)
        return btask  # type: ignore[return-value]
    kind: type[Task[P, object]] = AsyncTask if inspect.iscoroutinefunction(fn) else SyncTask
    task = kind(registry, fn, name=name, retry=retry, defaults=defaults)
    if flow and given:
        task.flow = TaskFlow.of(task.name, task.codec.signature, **flow)
    registry.add(task)
    return task


#: The id of the job whose handler runs in this context (the worker sets it), if any.
RUNNING_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_running_job", default=None
)

#: The member lists of the batches open in this context (`App.batch`), innermost last.
COLLECTING: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar(
    "conveyor_batches", default=()
)


async def write_jobs(registry: Registry, jobs: list[Job]) -> list[str]:
    """Store `jobs` through the registry's producer (one call), and make them members of
    every batch open in this context. The ids holding their places (see `Backend.enqueue`)."""
    ids = await registry.producer.enqueue(jobs)
    for members in COLLECTING.get():
        members.extend(ids)
    return ids


def check_after(registry: Registry, opts: JobOptions) -> None:
    """Refuse ``after=`` handles of jobs in another store than the registry's."""
    backend = registry.producer.backend
    for parent in opts.after or ():
        if isinstance(parent, JobHandle) and parent.backend is not backend:
            raise DependencyError(
                f"after= names job {parent.id} of another store ({parent.backend!r}); a job "
                f"can wait only for jobs of its own store ({backend!r})"
            )
