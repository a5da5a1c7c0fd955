"""`App`: the one entry object — the store, the task registry, workers and the inspector."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Protocol, Self, TypeVar, overload

from conveyor.backends import Backend, from_url
from conveyor.capabilities import Locks, require
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigError, StateError
from conveyor.flow import Circuit, RateLimit
from conveyor.inspector import Inspector
from conveyor.lock import Lock, OnLost
from conveyor.producer import JobOptions, Producer
from conveyor.registry import Registry
from conveyor.retry import RetryPolicy
from conveyor.scheduler import Schedule, Schedules
from conveyor.scheduler.schedules import CatchUp
from conveyor.serve import Server
from conveyor.task import AsyncTask, Batch, BatchTask, Signature, SyncTask, Task, make_task
from conveyor.taskflow import FlowOptionsDict
from conveyor.urls import mask
from conveyor.worker import WorkerConfig, parse_queues
from conveyor.worker.hooks import FailureHook, Hooks, Middleware
from conveyor.workflow import JobBatch

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
FH = TypeVar("FH", bound=FailureHook)
MW = TypeVar("MW", bound=Middleware)


class _BatchDecorator(Protocol):
    def __call__(
        self,
        fn: Callable[[list[T]], Coroutine[Any, Any, Sequence[R | BaseException]]]
        | Callable[[list[T]], Sequence[R | BaseException]],
    ) -> BatchTask[T, R]: ...


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, R]) -> SyncTask[P, R]: ...


class App:
    """A Conveyor application: where jobs are stored and which tasks exist.

    Args:
        url: the store. ``sqlite:///jobs.db`` (default ``sqlite:///conveyor.db``; four
            slashes for an absolute path), ``redis://host:6379/0?prefix=myapp`` (also
            ``rediss://``, ``redis+cluster://``; needs ``conveyor[redis]``), ``memory://``
            for tests.
        clock: the time source (`FakeClock` in tests).
        max_payload: largest encoded arguments accepted per job, in bytes (default 1 MiB).
        backend: an already built backend, instead of `url`.

    Example:
        app = conveyor.App("sqlite:///jobs.db")

        @app.task(queue="emails", retry=conveyor.RetryPolicy(max_attempts=5), timeout=30)
        async def send_email(to: str, subject: str) -> str: ...

        job = await send_email.enqueue("a@b.c", "hi")
    """

    def __init__(
        self,
        url: str = "sqlite:///conveyor.db",
        *,
        clock: Clock | None = None,
        max_payload: int = 1 << 20,
        backend: Backend | None = None,
    ) -> None:
        self.url = url if backend is None else f"<{type(backend).__name__}>"
        self.clock = clock or (backend.clock if backend else SystemClock())
        self.backend = backend or from_url(url, clock=self.clock)
        self.producer = Producer(self.backend, self.clock)
        self.registry = Registry(self.producer, max_payload=max_payload)
        self.inspector = Inspector(self.backend)
        #: Periodic jobs (`periodic`, `schedule`), run by every worker's scheduler.
        self.schedules = Schedules(self.registry)
        #: Failure hooks and middleware (`on_failure`, `on_dead_letter`, `middleware`).
        self.hooks = Hooks()
        self._entered = 0

    def __repr__(self) -> str:
        return f"<conveyor.App {mask(self.url)} tasks={len(self.registry)}>"

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        batch: Batch,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        keep_for: float | None = None,
    ) -> _BatchDecorator: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        batch: None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        keep_for: float | None = None,
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: str | None = None,
        circuit: Circuit | None = None,
        group: str | None = None,
        group_weight: int | None = None,
    ) -> _TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        batch: Batch | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        keep_for: float | None = None,
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: str | None = None,
        circuit: Circuit | None = None,
        group: str | None = None,
        group_weight: int | None = None,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., ...)``.

        Args:
            name: registered name (default: the function's name).
            queue: default queue of its jobs.
            priority: default priority (-100..100, higher first).
            retry: its `RetryPolicy` (default: 3 attempts, exponential backoff from 1 s).
            timeout: seconds one attempt may run.
            keep_for: seconds to keep finished jobs and results (default 1 day).
            batch: make it a durable batch task (see `conveyor.Batch`): the function takes a
                list of items and returns one result per item; each item is its own job.

        Flow control, held by the store across every worker (see `conveyor.taskflow`; not
        for batch tasks):

        Args:
            concurrency: most of its jobs running at once (per key or group, with those).
            rate_limit: most starts per time: ``"100/s"``, ``"10/m"``, ``"5000/h"``, or a
                `conveyor.RateLimit` (rate and burst).
            limit_key: apply the limits per key, a template of its parameters:
                ``"{account_id}"`` (with ``concurrency=1``: one at a time per key, in order).
            circuit: a `conveyor.Circuit`: stop starting its jobs while they fail.
            group: its fair-share group, a template (``"{tenant}"``): a queue's groups take
                turns; the limits above then apply per group.
            group_weight: jobs its group is served per turn (1-1000, default 1).

        Raises:
            ConfigError: a bad option (named with its value), a template naming no parameter
                of the function, `limit_key` without a limit or with `group`.

        Example:
            @app.task(concurrency=1, limit_key="{account_id}")
            async def sync_account(account_id: int, full: bool = False) -> None: ...
        """
        defaults = JobOptions(queue=queue, priority=priority, timeout=timeout, keep_for=keep_for)
        flow: FlowOptionsDict = {
            "concurrency": concurrency, "rate_limit": rate_limit, "limit_key": limit_key,
            "circuit": circuit, "group": group, "group_weight": group_weight,
        }  # fmt: skip

        def register(f: Callable[..., Any]) -> Task[..., object]:
            return make_task(
                self.registry, f, name=name, retry=retry, defaults=defaults, batch=batch,
                flow=flow,
            )  # fmt: skip

        return register(fn) if fn is not None else register

    # -- periodic jobs ---------------------------------------------------------------------

    def periodic(
        self,
        expression: str,
        *,
        tz: str | None = None,
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        catch_up: CatchUp = "latest",
        misfire_grace: float = 300.0,
        overlap: bool = True,
    ) -> _TaskDecorator:
        """Register a function as a task and run it on a schedule (see `schedule`).

        Example:
            @app.periodic("0 9 * * MON", tz="Europe/Berlin", queue="reports", args=("weekly",))
            async def report(kind: str) -> None: ...
        """

        def register(fn: Callable[..., Any]) -> Any:
            task = self.task(
                name=name, queue=queue, priority=priority, retry=retry, timeout=timeout
            )(fn)
            self.schedule(
                task, expression, tz=tz, args=args, kwargs=kwargs, catch_up=catch_up,
                misfire_grace=misfire_grace, overlap=overlap,
            )  # fmt: skip
            return task

        return register

    def schedule(
        self,
        task: Task[..., object],
        expression: str,
        *,
        tz: str | None = None,
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: CatchUp = "latest",
        misfire_grace: float = 300.0,
        overlap: bool = True,
    ) -> Schedule:
        """Run a registered task on a schedule: one job per fire time, however many workers
        run the scheduler (each fire is a job keyed ``sched:<name>:<fire epoch>``).

        Args:
            task: a task of this app.
            expression: cron (5 fields, or 6 with seconds first), ``@every 90s`` /
                ``@every 1h30m``, or ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
                ``@yearly``.
            tz: IANA zone the cron fields are read in (default UTC); DST gaps fire once at
                the first valid instant after, repeated wall times fire once.
            args: positional arguments of every fire; kwargs: keyword arguments.
            name: the schedule's name (default: the task's name), unique in the app.
            queue: queue of the fire jobs (default: the task's); priority likewise.
            catch_up: fires missed while no scheduler ran: ``"latest"`` (the most recent
                one within `misfire_grace`), ``"all"`` (each within it, at most 100) or
                ``"none"``.
            misfire_grace: seconds after its time a missed fire is still enqueued.
            overlap: ``False`` skips a fire while the previous fire's job is still live.

        Raises:
            InvalidSchedule: a bad expression (the message names the field), zone, name,
                duplicate name, option, arguments, or a task this app does not register.

        Example:
            app.schedule(send_digest, "@every 90s", args=("ops",), name="ops-digest")
        """
        return self.schedules.add(
            task, expression, tz=tz, args=args, kwargs=kwargs, name=name, queue=queue,
            priority=priority, catch_up=catch_up, misfire_grace=misfire_grace, overlap=overlap,
        )  # fmt: skip

    # -- hooks and middleware --------------------------------------------------------------

    def on_failure(self, fn: FH) -> FH:
        """Call ``fn(job: JobInfo, error)`` after every failed attempt of any job (one that
        will retry and one that fails for good), once the store recorded it; async or sync
        (sync ones run on the worker's threads). Hooks run in registration order, each for
        at most the worker's `hook_timeout`; one that raises or hangs is logged and never
        changes the job's outcome. Notifications, not durable: a worker killed between the
        failure and the hook loses that call.

        Example:
            @app.on_failure
            async def report(job: conveyor.JobInfo, error: BaseException) -> None:
                log.warning("%s attempt %d failed: %r", job.task, job.attempt, error)
        """
        return self.hooks.add_on_failure(fn)

    def on_dead_letter(self, fn: FH) -> FH:
        """Call ``fn(job: JobInfo, error)`` when a job fails for good (attempts used up, an
        error that never retries, a bad payload, a passed deadline); after the `on_failure`
        hooks, with the same rules.

        Example:
            @app.on_dead_letter
            def page(job: conveyor.JobInfo, error: BaseException) -> None: ...
        """
        return self.hooks.add_on_dead_letter(fn)

    def middleware(self, fn: MW) -> MW:
        """Wrap every execution of every (non-batch) task in ``fn(job: JobInfo)``, an async
        context manager factory, entered on the event loop around the handler call (a sync
        handler's thread call too), inside the job's timeout; the first registered is the
        outermost. An error entering it fails the attempt like a handler error (the retry
        policy applies); the handler's error passes through it.

        Example:
            @app.middleware
            @contextlib.asynccontextmanager
            async def with_db_session(job: conveyor.JobInfo) -> AsyncIterator[None]:
                async with db.session():
                    yield
        """
        return self.hooks.add_middleware(fn)

    # -- running ---------------------------------------------------------------------------

    def worker(
        self,
        queues: str | Sequence[str] | None = None,
        *,
        concurrency: int = 16,
        strict: bool = False,
        **config: Any,
    ) -> Server:
        """A worker (with maintenance) for this app; see `WorkerConfig` for every option.

        Without `queues` it serves ``default`` and every queue the app's tasks declare
        (``@app.task(queue=...)``); its start-up log line names them.

        Example:
            await app.worker("critical=6,default=3,low=1", concurrency=64).run()
        """
        if queues is None:
            declared = (t.defaults.queue or "default" for t in self.registry)
            queues = list(dict.fromkeys(["default", *declared]))
        cfg = WorkerConfig(
            queues=parse_queues(queues), concurrency=concurrency, strict=strict, **config
        )
        return Server(self.backend, self.registry, cfg, self.clock, self.schedules, self.hooks)

    # -- workflows -------------------------------------------------------------------------

    def batch(
        self,
        *,
        on_success: Signature[Any] | None = None,
        on_complete: Signature[Any] | None = None,
        reopen: str | None = None,
    ) -> JobBatch:
        """Jobs enqueued inside ``async with app.batch(...):`` form a batch; `on_success`
        runs once they all completed, `on_complete` once they all ended. ``reopen=batch.id``
        opens an existing batch again to add jobs (see `conveyor.workflow.JobBatch`).

        Example:
            async with app.batch(on_success=notify.s("import done")) as batch:
                for row in rows:
                    await import_row.enqueue(row)
            print(await batch.status())
        """
        return JobBatch(
            self.registry, on_success=on_success, on_complete=on_complete, reopen=reopen
        )

    # -- locks -----------------------------------------------------------------------------

    _locks: tuple[object, Locks] | None = None  # (store, store as Locks): checked once

    def dashboard(self, *, auth: Any = None, read_only: bool = False) -> Any:
        """The web dashboard over this app as an ASGI app (``conveyor[dashboard]``): see
        `conveyor.dashboard.create_app` for `auth` (``Token``, ``Basic`` or a callable of
        the request) and `read_only`."""
        from conveyor.dashboard import create_app

        return create_app(self.inspector, schedules=self.schedules, auth=auth, read_only=read_only)

    def mount_dashboard(
        self, asgi_app: Any, path: str = "/jobs", *, auth: Any = None, read_only: bool = False
    ) -> None:
        """Serve the dashboard at `path` inside an existing Starlette or FastAPI app
        (anything with ``.mount(path, app)``); its links follow the mount.

        Example:
            app.mount_dashboard(fastapi_app, "/jobs", auth=lambda request: is_admin(request))
        """
        if not callable(getattr(asgi_app, "mount", None)):
            raise ConfigError(
                f"mount_dashboard needs an app with .mount(path, app) (Starlette, FastAPI), "
                f"not {type(asgi_app).__name__}"
            )
        if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
            raise ConfigError(f"mount_dashboard: path must start with '/' and not end with one, "
                              f"like '/jobs', not {path!r}")  # fmt: skip
        asgi_app.mount(path, self.dashboard(auth=auth, read_only=read_only))

    def lock(self, name: str, ttl: float, wait: float = 0.0, *, on_lost: OnLost = "cancel") -> Lock:
        """A distributed lock on this app's store (every process and host using it), renewed
        every ``ttl / 3`` while held; see `conveyor.lock.Lock`.

        Args:
            name: the lock's name.
            ttl: seconds the store keeps it without a renewal (how long a crashed holder
                blocks the others).
            wait: seconds to wait for a held lock (woken by its release) before
                `LockNotAcquired`; 0 tries once.
            on_lost: ``"cancel"`` cancels the body and raises `LockLost` if the lock is lost
                while held; ``"ignore"`` only sets ``lock.lost``.

        Example:
            async with app.lock("report:generate", ttl=60) as lock:
                print(lock.token)  # fencing token, larger for every later holder

            with app.lock("nightly", ttl=30, wait=5):  # synchronous scripts
                ...
        """
        cached = self._locks
        if cached is None or cached[0] is not self.backend:  # the Protocol check costs ~20 us
            cached = self._locks = (self.backend, require(self.backend, Locks, "app.lock()"))
        return Lock(cached[1], self.clock, self.registry.portal, name, ttl, wait, on_lost=on_lost)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Enter to coalesce concurrent enqueues into batches; exit closes the store."""
        if self._entered == 0:
            await self.producer.__aenter__()
        self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered -= 1
        if self._entered == 0:
            await self.producer.__aexit__(exc_type, exc, tb)
            await self.aclose()

    async def aclose(self) -> None:
        """Close the store's connections and the sync portal."""
        self.registry.portal.close()
        await self.backend.aclose()

    def close(self) -> None:
        """`aclose()` for synchronous code."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        raise StateError("App.close() called inside an event loop; use await app.aclose()")
