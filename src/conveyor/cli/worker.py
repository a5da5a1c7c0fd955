"""`conveyor worker`: run workers in this process, or N supervised processes with ``-p N``.

Signals are handled here and only here: the first SIGTERM/SIGINT starts a graceful stop, a
second cancels running jobs at once (they are retried, not lost).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from conveyor.app import App
from conveyor.cli.worker_metrics import SupervisorMetrics, child_metrics
from conveyor.errors import unwrap_group
from conveyor.worker import WorkerStats

__all__ = ["run_worker", "supervise"]

log = logging.getLogger("conveyor.cli")


def run_worker(app: App, *, options: dict[str, object], queues: str | None) -> WorkerStats:
    """Run one worker in this process until a signal stops it.

    Without ``--queues`` (or with `queues` None) it serves every queue the app's tasks
    declare, plus ``default`` (see `App.worker`).
    """

    async def main() -> WorkerStats:
        server = app.worker(queues, **options)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        parent = os.getppid()
        keep = child_metrics(server)  # under -p N with --metrics-port: count for the sum
        try:
            async with app, asyncio.TaskGroup() as tg:
                watch = gauges = None
                if os.environ.get("CONVEYOR_SUPERVISED"):
                    watch = tg.create_task(_orphan_watch(parent, server.stop))
                if keep is not None:
                    gauges = tg.create_task(keep())
                stats = await server.run()
                for task in (watch, gauges):
                    if task is not None:
                        task.cancel()
                return stats
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except BaseExceptionGroup as eg:
        raise unwrap_group(eg) from None


async def _orphan_watch(parent: int, stop: Callable[[], None]) -> None:
    """Stop gracefully if the supervisor disappears (e.g. it was SIGKILLed)."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; stopping", parent)
    stop()


def supervise(
    head: Sequence[str],
    argv: Sequence[str],
    processes: int,
    *,
    restart_delay: float = 0.5,
    max_restart_delay: float = 30.0,
    metrics: SupervisorMetrics | None = None,
) -> int:
    """Run `processes` copies of ``conveyor [head] worker [argv]``; restart any that dies.

    A child that keeps dying soon after it starts is restarted with growing delays (up to
    `max_restart_delay`), so a broken deployment does not spin. Returns 0 when every child
    exited cleanly after a stop signal. With `metrics`, the supervisor serves the sum of
    its children's metrics (`conveyor.cli.worker_metrics`).
    """
    cmd = [sys.executable, "-m", "conveyor", *head, "worker", *argv, "--processes", "1"]
    children: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    delays: dict[int, float] = {}
    stopping = 0

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping += 1
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def spawn(slot: int) -> None:
        children[slot] = _spawn(cmd, env)
        started[slot] = time.monotonic()

    def alive() -> tuple[list[int], list[int]]:
        procs = list(children.values())
        return [c.pid for c in procs if c.poll() is None], [
            c.pid for c in procs if c.poll() is not None
        ]

    env = {**os.environ, "CONVEYOR_SUPERVISED": "1"}
    if metrics is not None:
        metrics.alive = alive
        env.update(metrics.env)
        metrics.start()  # a port in use fails here, before any child starts
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failures = 0
    try:
        for slot in range(processes):
            spawn(slot)
        while children:
            time.sleep(0.1)
            for slot, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                if metrics is not None:
                    metrics.child_exited(child.pid)
                if stopping:
                    # A child told to stop before it could handle signals dies of SIGTERM:
                    # that is a clean stop too.
                    failures += code not in (0, -signal.SIGTERM)
                    del children[slot]
                    continue
                lived = time.monotonic() - started[slot]
                delay = (
                    restart_delay
                    if lived > 10
                    else min(max_restart_delay, delays.get(slot, restart_delay / 2) * 2)
                )
                delays[slot] = delay
                log.warning(
                    "worker process %d exited with %s after %.1fs; restarting it in %.1fs",
                    child.pid,
                    code,
                    lived,
                    delay,
                )
                end = time.monotonic() + delay
                while time.monotonic() < end and not stopping:
                    time.sleep(0.05)
                if stopping:
                    del children[slot]
                else:
                    spawn(slot)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for child in children.values():
            if child.poll() is None:
                child.kill()
        if metrics is not None:
            metrics.close()
    return 1 if failures else 0


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which forwards
    # exactly one SIGTERM per signal it gets (so one Ctrl-C is one graceful stop).
    return subprocess.Popen(cmd, env=env, start_new_session=True)
