"""Hooks and middleware: user code a worker runs around jobs.

- `on_failure` hooks run after *every* failed attempt (one that will retry and one that
  fails for good), `on_dead_letter` hooks after those that fail for good (after the
  `on_failure` ones), each with ``(job: JobInfo, error: BaseException)``, in registration
  order. They run once the store has recorded the outcome, in the job's own slot (so slow
  hooks slow claiming, never past `concurrency`), each for at most `hook_timeout` seconds.
  A hook that raises or runs out of time is logged with the job and the hook's name; the
  job's outcome never changes. Sync hooks run on the worker's threads. Hooks are
  notifications, not durable: a worker killed between a failure and its hook loses that
  call, and an attempt that ends by a shutdown, a lost lease or a rescue runs none.
- `middleware` factories ``fn(job: JobInfo) -> async context manager`` wrap every execution
  of a (non-batch) task, entered on the event loop around the handler call (around the
  thread call of a sync handler), inside the job's timeout; the first registered is the
  outermost. An error entering one fails the attempt like a handler error; the handler's
  error passes through each (which may observe it; one that suppresses it completes the
  attempt with result ``None``, as a ``with`` block would).

With none registered a job pays nothing: middleware is one empty-tuple test per job, and
hooks are looked at only for failed attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from conveyor.errors import ConfigError
from conveyor.worker.context import JobInfo

__all__ = ["FailureHook", "Hooks", "Middleware", "enter_middleware"]

log = logging.getLogger("conveyor.worker")

FailureHook = Callable[[JobInfo, BaseException], Any]
"""``hook(job, error)``: an async function or a plain one (run on a worker thread)."""

Middleware = Callable[[JobInfo], contextlib.AbstractAsyncContextManager[Any]]
"""``fn(job)`` returning an async context manager (``@contextlib.asynccontextmanager``)."""

H = TypeVar("H", bound=Callable[..., Any])

# (function, is async, name for logs)
_Entry = tuple[Callable[..., Any], bool, str]


class Hooks:
    """The hooks and middleware of one `App`, shared by its workers (registered later ones
    apply to workers already built)."""

    __slots__ = ("middleware", "on_dead_letter", "on_failure")

    def __init__(self) -> None:
        self.on_failure: tuple[_Entry, ...] = ()
        self.on_dead_letter: tuple[_Entry, ...] = ()
        #: ``(factory, name)`` pairs, outermost first.
        self.middleware: tuple[tuple[Middleware, str], ...] = ()

    def add_on_failure(self, fn: H) -> H:
        """Register a hook for every failed attempt; returns `fn` (a decorator)."""
        self.on_failure = (*self.on_failure, _hook(fn, "on_failure"))
        return fn

    def add_on_dead_letter(self, fn: H) -> H:
        """Register a hook for jobs that fail for good; returns `fn` (a decorator)."""
        self.on_dead_letter = (*self.on_dead_letter, _hook(fn, "on_dead_letter"))
        return fn

    def add_middleware(self, fn: H) -> H:
        """Register a middleware factory; returns `fn` (a decorator)."""
        if not callable(fn):
            raise ConfigError(
                "app.middleware takes a function of (job) returning an async context manager, "
                f"got {type(fn).__name__} {fn!r}"
            )
        name = _name(fn)
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigError(
                f"middleware {name} is a generator function; decorate it with "
                "@contextlib.asynccontextmanager"
            )
        _check_arity(fn, 1, f"middleware {name}", "(job)")
        self.middleware = (*self.middleware, (fn, name))
        return fn

    async def failed(
        self,
        job: JobInfo,
        error: BaseException,
        *,
        dead: bool,
        threads: Executor,
        timeout: float,
    ) -> None:
        """Run the `on_failure` hooks (then the `on_dead_letter` ones if `dead`) for one
        failed attempt, one after another; never raises but `CancelledError`."""
        for entry in self.on_failure:
            await _run(entry, "on_failure", job, error, threads, timeout)
        if dead:
            for entry in self.on_dead_letter:
                await _run(entry, "on_dead_letter", job, error, threads, timeout)


async def enter_middleware(
    stack: contextlib.AsyncExitStack, middleware: Sequence[tuple[Middleware, str]], job: JobInfo
) -> None:
    """Enter each middleware's context for `job` on `stack`, outermost first."""
    for fn, name in middleware:
        cm = fn(job)
        if not hasattr(cm, "__aenter__"):
            hint = (
                " (a sync context manager: use @contextlib.asynccontextmanager)"
                if hasattr(cm, "__enter__")
                else ""
            )
            raise ConfigError(
                f"middleware {name} returned {type(cm).__name__}, not an async context "
                f"manager{hint}"
            )
        await stack.enter_async_context(cm)


async def _run(
    entry: _Entry,
    kind: str,
    job: JobInfo,
    error: BaseException,
    threads: Executor,
    timeout: float,
) -> None:
    fn, is_async, name = entry
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            if is_async:
                await fn(job, error)
            else:
                call = functools.partial(contextvars.copy_context().run, fn, job, error)
                result = await asyncio.get_running_loop().run_in_executor(threads, call)
                if inspect.isawaitable(result):  # a callable object with an async __call__
                    await result
    except TimeoutError:
        if not limit.expired():  # the hook's own TimeoutError
            log.exception("job %s (%s): %s hook %s raised", job.id, job.task, kind, name)
            return
        log.error(
            "job %s (%s): %s hook %s did not finish within %s s; abandoned (the job's "
            "outcome stands)", job.id, job.task, kind, name, timeout,
        )  # fmt: skip
    except Exception:
        log.exception("job %s (%s): %s hook %s raised", job.id, job.task, kind, name)


def _hook(fn: Callable[..., Any], kind: str) -> _Entry:
    if not callable(fn):
        raise ConfigError(
            f"app.{kind} takes a function of (job, error), got {type(fn).__name__} {fn!r}"
        )
    name = _name(fn)
    _check_arity(fn, 2, f"{kind} hook {name}", "(job, error)")
    return (fn, inspect.iscoroutinefunction(fn), name)


def _check_arity(fn: Callable[..., Any], n: int, what: str, shape: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: accept them
        return
    try:
        signature.bind(*([None] * n))
    except TypeError as exc:
        raise ConfigError(f"{what} must take {shape}: {exc}") from None


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname
