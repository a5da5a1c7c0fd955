"""The direct handoff (single Redis): an idle worker is handed, already leased, a job that an
enqueue stored while it waited, so the job starts one round trip after it was stored, not two.

How it runs (the Lua side is ``handoff`` and ``lease_job`` in ``lua/prelude.lua``):

1. The worker runs the ``wait`` script: it registers as a waiter on its queues
   (``q:<queue>:waiters``, scored by a deadline just short of its ``BLPOP`` timeout), unless
   work is ready already or a lease sits in its inbox.
2. It blocks in ``BLPOP`` on its inbox and the queues' wake lists, on a `resp.Pipe` of its
   own (``Conn.blpop``: a blocked socket serves nobody else); the backend's main `Pipe` stays
   free for scripts and reads, and its ``CLIENT UNBLOCK`` ends a cancelled wait.
3. An enqueue that finds a live waiter leases the queue's best ready job to it and pushes
   the lease into its inbox; the worker's ``BLPOP`` returns it (`handed`).

A registration ends with the handoff, with the worker's next claim (which also drains its
inbox), or at its deadline. A worker that stops waiting (stop signal, store error) runs
``unwait``: its registration goes and whatever was handed over meanwhile is given back
(queued again, the attempt not counted), including a lease its cancelled ``BLPOP`` had
already popped. A waiter that dies holding a handed job is an ordinary dead worker: the
lease expires and ``rescue`` reruns the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import ClaimRequest
from conveyor.backends.redis.codec import decode, text, unpack_lease
from conveyor.job import Lease

if TYPE_CHECKING:
    from conveyor.backends.redis.backend import RedisBackend
    from conveyor.backends.redis.connect import Conn

__all__ = ["handed", "wait_for_lease"]

log = logging.getLogger("conveyor.backends.redis")


async def wait_for_lease(
    backend: RedisBackend, queues: Sequence[str], timeout: float, worker: str, lease_for: float
) -> list[Lease]:
    """`RedisBackend.wait_for_lease`: `wait`, registered as a waiter, returning the lease an
    enqueue handed over meanwhile (or none). In cluster mode, plain `wait`."""
    if backend.keys.cluster or timeout <= 0 or not queues:
        await backend.wait(queues, timeout)
        return []
    conn = await backend._conn()
    qs = list(dict.fromkeys(queues))
    lost: list[Any] = []  # a handed-over lease popped just as we were cancelled
    try:
        with backend._errors("wait"):
            return await _wait(backend, conn, qs, timeout, worker, lease_for, lost)
    except BaseException:
        # Stopped waiting (the worker stops or got busy, or the store failed): give back
        # what was handed over meanwhile, so it doesn't wait out its lease.
        inbox = backend.keys.inbox(worker)
        popped = [handed(r[1]) for r in lost if text(r[0]) == inbox]
        with contextlib.suppress(Exception):
            await asyncio.shield(_give_back(backend, conn, qs, worker, [x for x in popped if x]))
        raise


async def _give_back(
    backend: RedisBackend, conn: Conn, qs: list[str], worker: str, popped: list[Lease]
) -> None:
    await conn.scripts["unwait"]([backend.keys.route(qs[0])], [*backend._args(), worker])
    if popped:
        await backend.release(popped)


async def _wait(
    backend: RedisBackend,
    conn: Conn,
    qs: list[str],
    timeout: float,
    worker: str,
    lease_for: float,
    lost: list[Any],
) -> list[Lease]:
    keys = backend.keys
    block = min(timeout, backend.settings.socket_timeout / 2)
    due = await conn.scripts["wait"](
        [keys.route(qs[0])],
        [*backend._args(), worker, repr(float(lease_for)), repr(max(0.0, block - 0.05)), *qs],
    )
    if due == b"inbox":
        return await backend.claim(ClaimRequest(qs, 1, lease_for, worker))
    if due == b"0":
        return []
    timed = due is not None and float(due) < block
    if due is not None:
        block = min(block, float(due))
    if block < 0.001:
        return []
    inbox = keys.inbox(worker)
    lists = [inbox, *(keys.q(q, "wake") for q in qs)]
    if timed:
        # Redis checks blocking timeouts on its `hz` timer (every 100 ms at the default hz
        # 10), so a BLPOP timed to a delayed job's due time returns up to 100 ms late: time
        # it here instead (a cancelled BLPOP is unblocked, and what it popped goes to `lost`).
        try:
            async with asyncio.timeout(block):
                reply = await conn.blpop(lists, block + 0.5, lost.append)
        except TimeoutError:  # a lease handed over just as the timer fired is still ours
            got = [handed(r[1]) for r in lost if text(r[0]) == inbox]
            lost.clear()
            return [x for x in got if x is not None]
    else:
        reply = await conn.blpop(lists, block, lost.append)
    if reply is None or text(reply[0]) != inbox:
        return []
    lease = handed(reply[1])
    return [] if lease is None else [lease]


def handed(entry: bytes) -> Lease | None:
    """A lease from a worker's inbox; `None` (logged) if unreadable: it then expires and
    maintenance puts the job back."""
    try:
        token, until, row = unpack_lease(entry)
    except ValueError as exc:
        log.error("unreadable lease in a worker inbox (%s): %r", exc, entry[:200])
        return None
    job = decode(row)
    return None if job is None else Lease(job, token, until)
