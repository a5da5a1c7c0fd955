"""Stuck-job reports: jobs running past their timeout, and an event loop blocked too long.

`StuckWatch` checks the worker's running jobs every half second (no per-job work on the hot
path): a job past its ``timeout`` is reported once per attempt, with the stack of the thread
running it (a sync handler: found by the handler's code object in `sys._current_frames()`)
or of its asyncio task. A watchdog thread sees the loop's 0.1 s heartbeat go stale and
reports each blocked spell once, with the loop thread's stack. Each report is one WARNING
log, a call of every `on_report` callback, and a line in `reports()` while still current.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.clock import Clock
from conveyor.worker import Worker, WorkerConfig
from conveyor.worker.lease import Running
from conveyor.worker.service import Service

__all__ = ["StuckWatch"]

log = logging.getLogger("conveyor.stuck")

CHECK_EVERY = 0.5
TICK = 0.1
BLOCK_MEMORY = 60.0


class StuckWatch(Service):
    """Reports stuck jobs and a blocked loop for one worker (see the module docstring)."""

    name = "stuck"

    def __init__(self, worker: Worker, config: WorkerConfig, clock: Clock) -> None:
        super().__init__()
        self.worker = worker
        self.config = config
        self.clock = clock
        self.on_report: list[Callable[[str, str], None]] = []
        self._watched: dict[tuple[str, int], Running] = {}
        self._reported: dict[tuple[str, int], str] = {}  # (job id, attempt) -> line
        self._blocked: list[tuple[float, str]] = []  # (monotonic, line)
        self._beat = time.monotonic()

    def reports(self) -> tuple[str, ...]:
        """The one-line reports still current: jobs still past their timeout, loop blocks
        within the last minute."""
        now = time.monotonic()
        blocked = tuple(line for at, line in self._blocked if now - at < BLOCK_MEMORY)
        return (*self._reported.values(), *blocked)

    def _report(self, kind: str, line: str, stack: str) -> None:
        log.warning("%s\n%s", line, stack)
        for fn in self.on_report:
            try:
                fn(kind, line)
            except Exception:
                log.exception("stuck-report callback %r failed", fn)

    async def run(self) -> None:
        done = threading.Event()
        threshold = self.config.block_threshold
        watchdog = None
        if threshold is not None:
            watchdog = threading.Thread(
                target=self._watch_loop,
                args=(threading.get_ident(), threshold, done),
                name="conveyor-stuck-watchdog",
                daemon=True,
            )
            watchdog.start()
        self.started()
        try:
            ticks = 0
            while not self.stopping:
                self._beat = time.monotonic()
                self._note_running()
                if ticks % round(CHECK_EVERY / TICK) == 0:
                    self._check_timeouts()
                ticks += 1
                try:
                    await asyncio.wait_for(self._stop.wait(), TICK)
                except TimeoutError:
                    pass
        finally:
            done.set()

    def _note_running(self) -> None:
        """Remember running jobs that have a timeout: the worker forgets a sync job at its
        timeout while its thread runs on, so the watch keeps its own record."""
        for job_id, entry in list(self.worker.jobs.running.items()):
            job = entry.lease.job
            if job.timeout is not None:
                self._watched.setdefault((job_id, job.attempts), entry)

    def _check_timeouts(self) -> None:
        if not self._watched:
            return
        now = self.clock.monotonic()
        frames = sys._current_frames()
        running = self.worker.jobs.running
        for key, entry in list(self._watched.items()):
            job = entry.lease.job
            assert job.timeout is not None
            if key[0] in running and (now - entry.started <= job.timeout or key in self._reported):
                continue  # within its time, or said already: no stack to look for
            stack = self._job_stack(entry, frames)
            if stack is None and key[0] not in running:  # ended (thread done, entry gone)
                del self._watched[key]
                self._reported.pop(key, None)
                continue
            if now - entry.started <= job.timeout or key in self._reported:
                continue
            line = (
                f"job {key[0]} ({job.task}, attempt {job.attempts}) running "
                f"{now - entry.started:.1f} s, past its {job.timeout} s timeout"
            )
            self._reported[key] = line
            self._report("timeout", line, stack or "(no stack found)")

    def _job_stack(self, entry: Running, frames: Mapping[int, Any]) -> str | None:
        """The stack of the thread running the job's sync handler (found by its code
        object), else of the job's asyncio task while the worker runs it, else `None`."""
        task = self.worker.registry.find(entry.lease.job.task)
        code = getattr(getattr(task, "fn", None), "__code__", None)
        if code is not None and not getattr(task, "is_async", True):
            for frame in frames.values():
                f: Any = frame
                while f is not None:
                    if f.f_code is code:
                        return "".join(traceback.format_stack(frame))
                    f = f.f_back
            return None
        if entry.task is not None and entry.lease.id in self.worker.jobs.running:
            return "".join(traceback.format_list(_task_frames(entry.task)))
        return None

    def _watch_loop(self, loop_thread: int, threshold: float, done: threading.Event) -> None:
        """The watchdog thread: one report per spell of a stale heartbeat."""
        in_spell = False
        while not done.wait(TICK):
            stale = time.monotonic() - self._beat
            if stale > threshold and not in_spell:
                in_spell = True
                frame = sys._current_frames().get(loop_thread)
                stack = "".join(traceback.format_stack(frame)) if frame else "(no stack)"
                line = f"event loop blocked for over {threshold} s"
                now = time.monotonic()
                self._blocked = [(at, x) for at, x in self._blocked if now - at < BLOCK_MEMORY]
                self._blocked.append((now, line))
                self._report("loop_blocked", line, stack)
            elif stale <= threshold:
                in_spell = False


def _task_frames(task: asyncio.Task[Any]) -> traceback.StackSummary:
    return traceback.StackSummary.extract((f, f.f_lineno) for f in task.get_stack())
