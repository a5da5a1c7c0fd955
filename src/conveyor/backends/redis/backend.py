"""`RedisBackend`: the contract on Redis 7+ / Valkey, each transition one Lua script.

Time: lease expiry, due dates and retention are judged by the *Redis server's* clock (``TIME``
inside the script) when the backend runs on the real clock, so clock skew between worker
machines cannot break leases. Given an explicit clock (a `FakeClock` in tests) the scripts use
``clock.now()`` instead, passed as an argument; `server_time=` overrides the choice.
`run_at` values are still stamped by the producing process's clock, so a producer whose clock
is off by *d* shifts its delays by *d*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from conveyor.backends import rules
from conveyor.backends.base import ANNOTATIONS, Backend, ClaimRequest
from conveyor.backends.lanes import check_circuit_change
from conveyor.backends.redis import handoff
from conveyor.backends.redis.codec import Keys, decode, enqueue_args, text
from conveyor.backends.redis.connect import Clients, Conn, parse_url, wrap_errors
from conveyor.backends.redis.reads import SWEEP, Reads, pairs
from conveyor.capabilities import LaneInfo, LockInfo, Rollup, WorkerInfo
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ClosedError, ConfigError, DependencyError
from conveyor.job import (
    Cancelled,
    Completed,
    Failed,
    Job,
    JobState,
    Lease,
    Outcome,
    Retrying,
)
from conveyor.names import check_queue
from conveyor.rollup import check_rows

__all__ = ["RedisBackend"]

log = logging.getLogger("conveyor.backends.redis")

_json = msgspec.json.Encoder()
_worker_info = msgspec.json.Decoder(WorkerInfo).decode
_STATES = {s.value: s for s in JobState}
_CHUNK = 500  # jobs per script call: bounds how long one call holds the server
_LEASE_EXPIRED = rules.lease_expired_error(0, 0.0).message


class RedisBackend(Reads, Backend):
    """Jobs in Redis. `App("redis://localhost:6379/0?prefix=myapp")` uses it.

    Args:
        url: ``redis://``, ``rediss://`` (TLS) or ``redis+cluster://`` URL; user and password
            in the URL for ACLs; ``?prefix=`` namespaces the keys (default ``conveyor``).
        clock: the time source. With the default real clock, scripts use the server's time.
        server_time: force (True) or forbid (False) using the server's clock in scripts.
        prefix: the key prefix, overriding the URL's.

    Example:
        async with RedisBackend("redis://localhost:6379/0") as backend:
            await backend.enqueue([job])
    """

    # Concurrent single enqueues go out in calls of up to 64 jobs, 4 in flight on one
    # connection: the server stores one batch while the next is being built (measured
    # with 100 coroutines: 13k jobs/s with one call of 100 at a time, 26k/s like this).
    enqueue_batch = 64
    enqueue_concurrency = 4

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        clock: Clock | None = None,
        *,
        server_time: bool | None = None,
        prefix: str | None = None,
    ) -> None:
        settings = parse_url(url, prefix)
        self.settings = settings
        self.clock = clock or SystemClock()
        self.server_time = type(self.clock) is SystemClock if server_time is None else server_time
        self.keys = Keys(settings.prefix, settings.cluster)
        self._clients = Clients(settings)
        self._checked = False
        self._closed = False
        self._known_queues: set[str] = set()
        if settings.cluster:
            # One script runs in one slot, and each queue has its own: a parent and its
            # child must share a queue (the base refuses other edges before writing).
            self.cross_queue_dependencies = False

    def __repr__(self) -> str:
        return f"RedisBackend({self.settings.safe_url!r}, prefix={self.keys.prefix!r})"

    # -- plumbing --------------------------------------------------------------------------

    def _args(self) -> list[Any]:
        now = "" if self.server_time else repr(self.clock.now())
        return [self.keys.prefix, "1" if self.keys.cluster else "0", now]

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return wrap_errors(self.settings, what)

    async def _conn(self) -> Conn:
        if self._closed:
            raise ClosedError(f"the Redis backend for {self.settings.safe_url} is closed")
        conn = self._clients.get()
        if not self._checked:
            await self._check_server(conn)
        return conn

    async def _check_server(self, conn: Conn) -> None:
        """First use: refuse Redis < 7, warn when job keys could be evicted."""
        import redis.exceptions as rexc

        with self._errors("connecting"):
            try:
                info: Any = await conn.client.info("server")
            except rexc.ResponseError:  # INFO disabled (renamed) on some managed services
                info = {}
            try:
                policy: Any = await conn.client.config_get("maxmemory-policy")
            except rexc.ResponseError:  # CONFIG disabled or not allowed for this ACL user
                policy = {}
        self._checked = True
        version = _first(info, "redis_version")
        if version and int(str(version).split(".")[0]) < 7:
            raise ConfigError(f"the Redis backend needs Redis 7 or later; the server is {version}")
        value = _first(policy, "maxmemory-policy")
        if isinstance(value, bytes):
            value = value.decode()
        if value and value != "noeviction":
            log.warning(
                "Redis at %s has maxmemory-policy=%s: under memory pressure it may evict job "
                "keys and lose jobs; set maxmemory-policy noeviction",
                self.settings.safe_url,
                value,
            )

    def _by_queue(self, queues: Iterable[str]) -> list[list[str]]:
        """Queues grouped so one script call never crosses a slot (one group unless cluster)."""
        qs = list(dict.fromkeys(queues))
        if not qs:
            return []
        return [[q] for q in qs] if self.keys.cluster else [qs]

    async def _queues(self, conn: Conn) -> list[str]:
        members = await conn.call("SMEMBERS", self.keys.queues)
        return sorted(text(m) for m in members)

    async def _register(self, conn: Conn, queues: set[str]) -> None:
        new = queues - self._known_queues
        if new:
            await conn.call("SADD", self.keys.queues, *sorted(new))
            self._known_queues |= new

    # -- producing -------------------------------------------------------------------------

    async def _enqueue(self, jobs: Sequence[Job], now: float) -> list[str]:
        conn = await self._conn()
        out = [job.id for job in jobs]
        dups: list[int] = []
        graph = any(job.parents for job in jobs)
        renamed: dict[str, str] = {}  # a duplicate's id -> its key's holder, for later chunks
        landed: list[int] = []  # (graphs) the jobs of the chunks stored so far
        with self._errors("enqueue"):
            await self._register(conn, {j.queue for j in jobs})
            if self.keys.cluster:
                await conn.call("HSET", self.keys.idx, *(x for j in jobs for x in (j.id, j.queue)))
                groups: dict[str, list[int]] = {}
                for i, job in enumerate(jobs):
                    groups.setdefault(job.queue, []).append(i)
                batches = list(groups.values())
            else:
                batches = [list(range(len(jobs)))]
            for batch in batches:
                for start in range(0, len(batch), _CHUNK):
                    part = batch[start : start + _CHUNK]
                    chunk = [jobs[i] for i in part]
                    if renamed:
                        chunk = [_renamed(job, renamed) for job in chunk]
                    res = await conn.scripts["enqueue"](
                        [self.keys.route(chunk[0].queue)], [*self._args(), *enqueue_args(chunk)]
                    )
                    if graph:
                        if res and isinstance(res[0], list):
                            await self._refused(conn, jobs, landed, dups, res[0])
                        landed += part
                    for i, r in zip(part, res, strict=True):
                        if r != 1:  # a duplicate: the id of the job holding its key
                            out[i] = text(r)
                            dups.append(i)
                            if graph:
                                renamed[jobs[i].id] = out[i]
            if dups and self.keys.cluster:
                await conn.call("HDEL", self.keys.idx, *(jobs[i].id for i in dups))
        return out

    async def _refused(
        self, conn: Conn, jobs: Sequence[Job], landed: list[int], dups: list[int], reply: Any
    ) -> None:
        """The enqueue script found a parent missing (purged since `_check_dependencies`)
        and wrote nothing of its chunk: raise, saying what earlier chunks of a call of more
        than `_CHUNK` jobs stored (a purge between two chunks is the only way there)."""
        if self.keys.cluster:
            kept = set(landed).difference(dups)
            ids = [j.id for i, j in enumerate(jobs) if i not in kept]
            for s in range(0, len(ids), SWEEP):
                await conn.call("HDEL", self.keys.idx, *ids[s : s + SWEEP])
        written = (
            f"the {len(landed)} jobs of the call's earlier chunks were stored, none of the rest"
            if landed
            else "nothing was written"
        )
        raise DependencyError(
            f"job {text(reply[0])} depends on {text(reply[1])}, which this store doesn't hold "
            f"(unknown, or already purged); {written}"
        )

    async def _link(self, child: str, parents: Sequence[str], holds: int, now: float) -> bool:
        """One ``link`` script call in the child's slot (cluster mode: the base refused
        parents in other queues; a single Redis lets the script read the child's queue,
        saving a round trip). The script reads every parent again before it writes."""
        conn = await self._conn()
        with self._errors("link"):
            queue = ""
            if self.keys.cluster:
                found = await self._queue_of(conn, child)
                if found is None:
                    return False
                queue = found
            res = await conn.scripts["link"](
                [self.keys.route(queue)], [*self._args(), queue, child, int(holds), *parents]
            )
        if isinstance(res, list):
            raise DependencyError(
                f"job {child} can't wait for {text(res[0])}, which this store doesn't hold "
                "(unknown, or already purged); nothing was changed"
            )
        return bool(res)

    # -- running ---------------------------------------------------------------------------

    async def _claim(self, request: ClaimRequest, now: float) -> list[Lease]:
        queues, limit = request.queues, request.limit
        lease_for, worker = request.lease_for, request.worker
        conn = await self._conn()
        leases: list[Lease] = []
        with self._errors("claim"):
            for group in self._by_queue(queues):
                want = limit - len(leases)
                if want <= 0:
                    break
                res = await conn.scripts["claim"](
                    [self.keys.route(group[0])],
                    [*self._args(), want, repr(float(lease_for)), worker, *group],
                )
                expires, handed = float(res[0]), int(res[1])
                for entry in res[2 : 2 + handed]:  # handed to this worker while it waited
                    lease = handoff.handed(entry)
                    if lease is not None:
                        leases.append(lease)
                for k in range(2 + handed, len(res), 2):
                    job = decode(res[k + 1])
                    if job is not None:
                        leases.append(Lease(job, int(res[k]), expires))
        return leases

    async def _extend(
        self, leases: Sequence[Lease], lease_for: float, now: float
    ) -> list[Lease | None]:
        res = await self._fenced("extend", leases, [repr(float(lease_for))])
        return [
            None if exp is None else Lease(lease.job, lease.token, float(exp))
            for lease, exp in zip(leases, res, strict=True)
        ]

    async def _settle(self, outcomes: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        extra = [_outcome_args(outcome) for _, outcome in outcomes]
        res = await self._fenced("settle", [lease for lease, _ in outcomes], [], extra)
        return [bool(ok) for ok in res]

    async def _release(self, leases: Sequence[Lease], now: float) -> list[bool]:
        return [bool(ok) for ok in await self._fenced("release", leases, [])]

    async def _annotate(
        self, items: Sequence[tuple[Lease, Mapping[str, bytes | None]]], now: float
    ) -> list[bool]:
        extra = [
            tuple(
                part
                for name in ANNOTATIONS
                for part in (
                    ("", "")
                    if name not in values
                    else ("d", "")
                    if values[name] is None
                    else ("s", values[name])
                )
            )
            for _, values in items
        ]
        res = await self._fenced("annotate", [lease for lease, _ in items], [], extra)
        return [bool(ok) for ok in res]

    async def _fenced(
        self,
        script: str,
        leases: Sequence[Lease],
        head: list[Any],
        extra: Sequence[tuple[Any, ...]] | None = None,
    ) -> list[Any]:
        """Run `script` over `leases` in batches: the script's arguments are `head`, then
        (queue, id, token, *extra[i]) per lease; its replies, one per lease, in order."""
        if not leases:
            return []
        conn = await self._conn()
        call = conn.scripts[script]
        out: list[Any] = [None] * len(leases)
        with self._errors(script):
            for part in self._parts(leases):
                args = [*self._args(), *head]
                for i in part:
                    lease = leases[i]
                    args += (lease.job.queue, lease.id, lease.token, *(extra[i] if extra else ()))
                res = await call([self.keys.route(leases[part[0]].job.queue)], args)
                for i, r in zip(part, res, strict=True):
                    out[i] = r
        return out

    def _parts(self, leases: Sequence[Lease]) -> list[list[int]]:
        """Indexes of `leases` in script-call batches (per queue in cluster mode)."""
        groups: dict[str, list[int]] = {}
        for i, lease in enumerate(leases):
            groups.setdefault(lease.job.queue if self.keys.cluster else "", []).append(i)
        return [g[s : s + _CHUNK] for g in groups.values() for s in range(0, len(g), _CHUNK)]

    # -- maintenance -----------------------------------------------------------------------

    async def _sweep(self, what: str, script: str, extra: list[Any]) -> int:
        conn = await self._conn()
        total = 0
        with self._errors(what):
            for group in self._by_queue(await self._queues(conn)):
                while True:
                    n = int(
                        await conn.scripts[script](
                            [self.keys.route(group[0])], [*self._args(), *extra, *group]
                        )
                    )
                    total += n
                    if n < SWEEP:
                        break
        return total

    async def _promote(self, now: float) -> int:
        return await self._sweep("promote", "promote", [SWEEP])

    async def _rescue(self, now: float) -> int:
        return await self._sweep("rescue", "rescue", [_LEASE_EXPIRED, SWEEP])

    async def _purge(self, states: frozenset[JobState], before: float | None, now: float) -> int:
        wanted = sorted(s.value for s in states)
        conn = await self._conn()
        deleted: list[bytes] = []
        with self._errors("purge"):
            queues = await self._queues(conn)
            if before is None:
                for group in self._by_queue(queues):
                    while True:
                        ids = await conn.scripts["purge"](
                            [self.keys.route(group[0])],
                            [*self._args(), SWEEP, len(wanted), *wanted, *group],
                        )
                        deleted += ids
                        if len(ids) < SWEEP:
                            break
            else:
                for queue in queues:
                    for state in wanted:
                        deleted += await self._purge_before(conn, queue, state, before)
            if self.keys.cluster and deleted:
                for s in range(0, len(deleted), SWEEP):
                    await conn.call("HDEL", self.keys.idx, *deleted[s : s + SWEEP])
        return len(deleted)

    async def _purge_before(self, conn: Conn, queue: str, state: str, before: float) -> list[bytes]:
        """Walk the state's index in seq order and delete what finished before `before`."""
        index = self.keys.q(queue, f"state:{state}")
        low: str = "-inf"
        deleted: list[bytes] = []
        while True:
            rows = pairs(
                await conn.call(
                    "ZRANGEBYSCORE", index, low, "+inf", "WITHSCORES", "LIMIT", 0, _CHUNK
                )
            )
            if not rows:
                return deleted
            deleted += await conn.scripts["purge_before"](
                [self.keys.route(queue)],
                [*self._args(), repr(float(before)), state, queue, *(text(m) for m, _ in rows)],
            )
            low = f"({int(rows[-1][1])}"

    # -- administration --------------------------------------------------------------------

    async def _queue_of(self, conn: Conn, job_id: str) -> str | None:
        if self.keys.cluster:
            q = await conn.call("HGET", self.keys.idx, job_id)
        else:
            q = await conn.call("HGET", self.keys.job("", job_id), "queue")
        return None if q is None else text(q)

    async def _cancel(self, job_id: str, reason: str, now: float) -> JobState | None:
        conn = await self._conn()
        with self._errors("cancel"):
            queue = await self._queue_of(conn, job_id)
            if queue is None:
                return None
            state = await conn.scripts["cancel"](
                [self.keys.route(queue)], [*self._args(), queue, job_id, reason]
            )
        if state is None:
            return None
        return _STATES.get(text(state), JobState.FAILED)  # an unknown state reads as failed

    async def _requeue(self, ids: Sequence[str], now: float) -> list[bool]:
        conn = await self._conn()
        with self._errors("requeue"):
            out, _ = await self._by_id_per_slot(conn, "requeue", ids)
        return out

    async def _delete(self, ids: Sequence[str], now: float) -> list[bool]:
        conn = await self._conn()
        with self._errors("delete"):
            out, done = await self._by_id_per_slot(conn, "delete", ids)
            if self.keys.cluster and done:
                await conn.call("HDEL", self.keys.idx, *done)
        return out

    async def _by_id_per_slot(
        self, conn: Conn, script: str, ids: Sequence[str]
    ) -> tuple[list[bool], list[str]]:
        """Run a ``(queue, id)``-pairs script over `ids`, one call per slot and `_CHUNK`:
        each id's answer (unknown ids: False), and the ids it applied to."""
        out = [False] * len(ids)
        queues = await self._queues_of(conn, ids)
        groups: dict[str, list[int]] = {}  # one script call per slot
        for i, queue in enumerate(queues):
            if queue is not None:
                groups.setdefault(queue if self.keys.cluster else "", []).append(i)
        done: list[str] = []
        for part in groups.values():
            for start in range(0, len(part), _CHUNK):
                chunk = part[start : start + _CHUNK]
                pairs_ = [x for i in chunk for x in (queues[i], ids[i])]
                res = await conn.scripts[script](
                    [self.keys.route(queues[chunk[0]] or "")], [*self._args(), *pairs_]
                )
                for i, ok in zip(chunk, res, strict=True):
                    out[i] = bool(ok)
                    if ok:
                        done.append(ids[i])
        return out, done

    async def _queues_of(self, conn: Conn, ids: Sequence[str]) -> list[str | None]:
        """Each job's queue (`None` for unknown ids), one round trip per `SWEEP` ids."""
        out: list[str | None] = []
        for s in range(0, len(ids), SWEEP):
            chunk = ids[s : s + SWEEP]
            if self.keys.cluster:
                found = await conn.call("HMGET", self.keys.idx, *chunk)
            else:
                found = await conn.many([("HGET", self.keys.job("", i), "queue") for i in chunk])
            out += [None if q is None else text(q) for q in found]
        return out

    async def wait_for_lease(
        self, queues: Sequence[str], timeout: float, worker: str, lease_for: float
    ) -> list[Lease]:
        """`wait`, registered as a waiter: an enqueue meanwhile leases its job to `worker`
        and hands it over through the worker's inbox, so the job starts one round trip after
        it was stored instead of two (see `handoff`). Single Redis only."""
        return await handoff.wait_for_lease(self, queues, timeout, worker, lease_for)

    async def _wait(self, queues: Sequence[str], timeout: float) -> None:
        conn = await self._conn()
        groups = self._by_queue(queues)
        with self._errors("wait"):
            for group in groups:
                due = await conn.scripts["wait"](
                    [self.keys.route(group[0])], [*self._args(), "", "0", "0", *group]
                )
                if due == b"0":
                    return
                if due is not None:
                    timeout = min(timeout, float(due))
            if len(groups) > 1:
                # Cluster mode, queues in several slots: BLPOP can only watch one slot, so
                # block on the first queue's and look at the others every 100 ms.
                timeout = min(timeout, 0.1)
            # Stay inside the socket timeout, or the blocked read would be taken for a hang.
            timeout = min(timeout, self.settings.socket_timeout / 2)
            if timeout < 0.001:
                return
            await conn.blpop([self.keys.q(q, "wake") for q in groups[0]], timeout)

    # -- capabilities (see `conveyor.capabilities`; every key in the prefix's slot) -------

    async def _capability(self, script: str, args: list[Any], key: str | None = None) -> Any:
        self._open()
        conn = await self._conn()
        with self._errors(script):
            return await conn.scripts[script]([key or self.keys.route("")], [*self._args(), *args])

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        """`Counters`: add `amount` to a fixed-window counter; the window (`ttl` seconds)
        starts at the increment that creates it."""
        res = await self._capability(
            "counter", [int(amount), repr(float(ttl))], self.keys.counter(key)
        )
        return int(res)

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> int | None:
        """`Locks`: take a free or expired lock; its new fencing token."""
        token = await self._capability("lock_acquire", [name, owner, repr(float(ttl))])
        return None if token is None else int(token)

    async def extend_lock(self, name: str, token: int, ttl: float) -> bool:
        """`Locks`: hold for `ttl` more seconds if `token` still holds it."""
        return bool(await self._capability("lock_extend", [name, token, repr(float(ttl))]))

    async def release_lock(self, name: str, token: int) -> bool:
        """`Locks`: free the lock if `token` still holds it."""
        return bool(await self._capability("lock_release", [name, token]))

    async def locks(self) -> list[LockInfo]:
        """`Locks`: the locks held now, by name."""
        rows = await self._capability("locks", [])
        locks = [LockInfo(text(n), text(o), int(t), float(e)) for n, o, t, e in rows]
        return sorted(locks, key=lambda lock: lock.name)

    async def wait_lock(self, name: str, timeout: float) -> None:
        """`Locks`: block on the lock's ``lock_free`` list (one token per release) for at
        most `timeout`, the holder's remaining ttl, or half the socket timeout."""
        left = float(await self._capability("lock_wait", [name]))
        timeout = min(timeout, left, self.settings.socket_timeout / 2)
        if timeout < 0.001:
            return
        conn = await self._conn()
        free = f"{self.keys.slot('')}:lock_free:{name}"
        lost: list[Any] = []
        with self._errors("wait_lock"):
            try:
                await conn.blpop([free], timeout, lost.append)
            except asyncio.CancelledError:
                if lost:  # a release's wake-up was popped for us: pass it to the next waiter
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.call("RPUSH", free, "1"))
                raise

    async def beat(self, worker: WorkerInfo, ttl: float) -> None:
        """`Presence`: record `worker` as alive for `ttl` seconds."""
        await self._capability("beat", [worker.id, _json.encode(worker), repr(float(ttl))])

    async def workers(self) -> list[WorkerInfo]:
        """`Presence`: workers heard from within their ttl, by id."""
        out: list[WorkerInfo] = []
        for _, info, seen in await self._capability("workers", []):
            try:
                worker = _worker_info(info)
            except msgspec.DecodeError:
                continue  # written by something else: not a worker we can show
            out.append(msgspec.structs.replace(worker, seen_at=float(seen)))
        return sorted(out, key=lambda w: w.id)

    async def leave(self, worker_id: str) -> None:
        """`Presence`: forget `worker_id`."""
        await self._capability("leave", [worker_id])

    async def add_rollups(self, rows: Sequence[Rollup], keep_for: float) -> None:
        """`Rollups`: every row in one script (per-minute hashes in the prefix's slot, so
        the call is atomic on Cluster too)."""
        self._open()
        check_rows(rows, keep_for)
        if not rows:
            return
        args: list[Any] = [repr(float(keep_for))]
        for row in rows:
            args += [row.minute, f"{row.queue}\t{row.task}", len(row.values)]
            for name, amount in row.values.items():
                args += [name, repr(float(amount))]
        await self._capability("rollup_add", args)

    async def rollups(
        self, since: float, until: float | None = None, *, queue: str | None = None
    ) -> list[Rollup]:
        """`Rollups`: the rows of the minutes overlapping ``[since, until)``."""
        self._open()
        end = self.clock.now() if until is None else until
        first = int(since // 60) * 60
        flat = await self._capability("rollup_read", [first, repr(float(end)), queue or ""])
        rows: list[Rollup] = []
        for k in range(0, len(flat), 3):
            q, task = text(flat[k + 1]).split("\t")
            values = _rollup_values.decode(flat[k + 2]) if flat[k + 2] != b"[]" else {}
            rows.append(Rollup(minute=int(flat[k]), queue=q, task=task, values=values))
        rows.sort(key=lambda r: (r.minute, r.queue, r.task))
        return rows

    async def pause(self, queue: str) -> bool:
        """`QueueControl`: stop claims (and handoffs) from `queue`; `True` if it was running.
        The flag is in the queue's slot, read inside the claim and enqueue scripts."""
        check_queue(queue)
        if self.keys.cluster:  # the registry first, so it always holds every paused queue
            await self._capability_call("SADD", self.keys.paused, queue)
        return bool(await self._capability("pause", ["1", queue], self.keys.route(queue)))

    async def resume(self, queue: str) -> bool:
        """`QueueControl`: claims take from `queue` again; `True` if it was paused. Wakes
        the queue's idle workers."""
        check_queue(queue)
        changed = bool(await self._capability("pause", ["0", queue], self.keys.route(queue)))
        if self.keys.cluster:
            await self._capability_call("SREM", self.keys.paused, queue)
        return changed

    async def paused(self) -> list[str]:
        """`QueueControl`: the paused queues, by name."""
        queues = sorted(text(q) for q in await self._capability_call("SMEMBERS", self.keys.paused))
        if not self.keys.cluster or not queues:
            return queues
        # The registry may hold a queue whose resume stopped half-way: its flag decides.
        conn = await self._conn()
        with self._errors("paused"):
            flags = await conn.many([("EXISTS", self.keys.q(q, "paused")) for q in queues])
        return [q for q, flag in zip(queues, flags, strict=True) if int(flag)]

    async def lanes(self, queue: str | None = None) -> list[LaneInfo]:
        """`FlowControl`: the lanes kept (of `queue`, or of every queue in the registry), by
        queue then name; one script call per slot. Idle lanes are left out (their state
        expires by itself, see ``FL.flush`` in ``lua/prelude.lua``)."""
        self._open()
        conn = await self._conn()
        out: list[LaneInfo] = []
        with self._errors("lanes"):
            queues = [check_queue(queue)] if queue is not None else await self._queues(conn)
            for group in self._by_queue(queues):
                rows = await conn.scripts["flow_lanes"](
                    [self.keys.route(group[0])], [*self._args(), *group]
                )
                out += [_lane_info(row) for row in rows]
        return sorted(out, key=lambda i: (i.queue, i.lane))

    async def set_circuit(
        self, queue: str, lane: str, state: str, duration: float | None = None
    ) -> str:
        """`FlowControl`: open (for `duration` s, None: until closed) or close a lane's
        circuit by hand, in the queue's slot; the state it was in."""
        self._open()
        check_circuit_change(queue, lane, state, duration)
        conn = await self._conn()
        until = "" if duration is None else repr(float(duration))
        with self._errors("set_circuit"):
            await self._register(conn, {queue})
            old = await conn.scripts["flow_circuit"](
                [self.keys.route(queue)],
                [*self._args(), queue, lane, state, until],
            )
        return text(old)

    async def _capability_call(self, *command: Any) -> Any:
        self._open()
        conn = await self._conn()
        with self._errors(str(command[0]).lower()):
            return await conn.call(*command)

    async def _aclose(self) -> None:
        await self._clients.aclose()


_rollup_values = msgspec.json.Decoder(dict[str, float])


def _renamed(job: Job, renamed: Mapping[str, str]) -> Job:
    """`job` with each parent skipped as a duplicate replaced by its key's holder."""
    if not job.parents or not any(p in renamed for p in job.parents):
        return job
    return msgspec.structs.replace(job, parents=tuple(renamed.get(p, p) for p in job.parents))


def _outcome_args(outcome: Outcome) -> tuple[Any, Any, Any]:
    if isinstance(outcome, Completed):
        return ("n", "", "") if outcome.result is None else ("c", outcome.result, "")
    if isinstance(outcome, Retrying):
        return ("r", repr(float(outcome.run_at)), _json.encode(outcome.error))
    if isinstance(outcome, Failed):
        return ("f", "", _json.encode(outcome.error))
    assert isinstance(outcome, Cancelled)
    return ("x", outcome.reason, "")


def _lane_info(row: Sequence[Any]) -> LaneInfo:
    """A `LaneInfo` from a ``flow_lanes`` row."""
    q, name, ready, running, weight, concurrency, rate, burst, tokens = row[:9]
    circuit, state, until, calls, failures = row[9:]
    return LaneInfo(
        queue=text(q),
        lane=text(name),
        ready=int(ready),
        running=int(running),
        weight=int(weight),
        concurrency=int(concurrency),
        rate=float(rate),
        burst=int(burst),
        tokens=float(tokens),
        circuit=text(circuit),
        circuit_state=text(state),
        open_until=float(until) if until else None,
        calls=int(calls),
        failures=int(failures),
    )


def _first(reply: Any, name: str) -> Any:
    """`name` from an INFO/CONFIG reply (a dict; in cluster mode, maybe one per node)."""
    if not isinstance(reply, dict):
        return None
    if name in reply:
        return reply[name]
    for value in reply.values():
        if isinstance(value, dict) and name in value:
            return value[name]
    return None
