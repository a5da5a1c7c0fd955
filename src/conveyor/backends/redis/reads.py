"""The Redis backend's reads: jobs by id, counts per queue and state, filtered paging.

Counts are `ZCARD`s of the per-(queue, state) index sets, and queries merge those indexes in
enqueue order, so neither scans the keyspace however many jobs are stored.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence
from typing import Any

from conveyor.backends.base import JobFilter, Page
from conveyor.backends.redis.codec import Keys, decode, text
from conveyor.backends.redis.connect import Conn
from conveyor.backends.redis.scripts import FIELDS
from conveyor.fields import STATES
from conveyor.job import Job, JobState

__all__ = ["SWEEP", "Reads", "pairs"]

SWEEP = 1000  # ids per round trip, and jobs per queue per promote/rescue/purge call
_STATES = STATES


class Reads(abc.ABC):
    """`get`, `counts` and `query` for `RedisBackend`, which supplies the connection."""

    keys: Keys

    @abc.abstractmethod
    async def _conn(self) -> Conn: ...

    @abc.abstractmethod
    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    async def _queues(self, conn: Conn) -> list[str]: ...

    async def _get(self, ids: Sequence[str]) -> list[Job | None]:
        conn = await self._conn()
        with self._errors("get"):
            return await self._get_all(conn, list(ids))

    async def _get_all(self, conn: Conn, ids: list[str]) -> list[Job | None]:
        out: list[Job | None] = [None] * len(ids)
        for s in range(0, len(ids), SWEEP):
            chunk = ids[s : s + SWEEP]
            if self.keys.cluster:
                queues = await conn.call("HMGET", self.keys.idx, *chunk)
            else:
                queues = [b""] * len(chunk)
            found = [(i, text(q)) for i, q in enumerate(queues) if q is not None]
            if not found:
                continue
            rows = await conn.many(
                [("HMGET", self.keys.job(q, chunk[i]), *FIELDS) for i, q in found]
            )
            for (i, _), row in zip(found, rows, strict=True):
                out[s + i] = decode(row)
        return out

    async def _counts(self, queue: str | None) -> dict[str, dict[JobState, int]]:
        conn = await self._conn()
        with self._errors("counts"):
            queues = [queue] if queue is not None else await self._queues(conn)
            if not queues:
                return {}
            sizes = await conn.many(
                [("ZCARD", self.keys.q(q, f"state:{s.value}")) for q in queues for s in _STATES]
            )
        out: dict[str, dict[JobState, int]] = {}
        width = len(_STATES)
        for n, q in enumerate(queues):
            row = sizes[n * width : (n + 1) * width]
            per = {s: int(c) for s, c in zip(_STATES, row, strict=True) if c}
            if per:
                out[q] = per
        return out

    def _valid_cursor(self, after: str) -> bool:
        """Cursors here are ``<seq>/<queue>`` (see `_query`)."""
        seq, sep, _ = after.partition("/")
        return after == "" or (seq.isascii() and seq.isdigit() and bool(sep))

    async def _query(self, filter: JobFilter, after: str | None, limit: int) -> Page:
        conn = await self._conn()
        with self._errors("query"):
            queues = [filter.queue] if filter.queue else await self._queues(conn)
            states = [filter.state] if filter.state else list(_STATES)
            sources = [(q, self.keys.q(q, f"state:{s.value}")) for q in queues for s in states]
            return await self._merge(conn, filter, sources, _cursor(after), limit)

    async def _merge(
        self,
        conn: Conn,
        filter: JobFilter,
        sources: list[tuple[str, str]],
        cursor: tuple[int, str],
        limit: int,
    ) -> Page:
        """Merge the (queue, state) indexes in (seq, queue) order, filtering as we go."""
        if len(sources) == 1 and filter.task is None and filter.key is None and not filter.lane:
            batch = limit + 1  # one index, nothing to filter out: exactly what the page needs
        else:  # several indexes to merge, or a filter that may pass over many: read ahead
            batch = min(max(limit + 1, 200), 2000)
        matches: list[tuple[tuple[int, str], Job]] = []
        while sources and len(matches) <= limit:
            fetched = [
                pairs(flat)
                for flat in await conn.many(
                    [
                        ("ZRANGEBYSCORE", key, cursor[0], "+inf", "WITHSCORES", "LIMIT", 0, batch)
                        for _, key in sources
                    ]
                )
            ]
            horizon: tuple[int, str] | None = None
            entries: list[tuple[tuple[int, str], str]] = []
            for (q, _), rows in zip(sources, fetched, strict=True):
                for member, score in rows:
                    pos = (int(score), q)
                    if pos > cursor:
                        entries.append((pos, member.decode()))
                if len(rows) == batch:  # truncated: only positions up to its last are safe
                    last = (int(rows[-1][1]), q)
                    horizon = last if horizon is None else min(horizon, last)
            entries.sort()
            if horizon is not None:
                entries = [e for e in entries if e[0] <= horizon]
                # Keep the sources that may hold more past the horizon.
                sources = [
                    src
                    for src, rows in zip(sources, fetched, strict=True)
                    if len(rows) == batch or (rows and (int(rows[-1][1]), src[0]) > horizon)
                ]
            jobs = await self._get_in(conn, [(pos[1], member) for pos, member in entries])
            for (pos, _), job in zip(entries, jobs, strict=True):
                if job is not None and _matches(job, filter):
                    matches.append((pos, job))
            if horizon is None:
                break
            cursor = horizon
        page = matches[:limit]
        nxt = f"{page[-1][0][0]}/{page[-1][0][1]}" if len(matches) > limit else None
        return Page([job for _, job in page], nxt)

    async def _get_in(self, conn: Conn, where: list[tuple[str, str]]) -> list[Job | None]:
        if not where:
            return []
        rows = await conn.many(
            [("HMGET", self.keys.job(q, job_id), *FIELDS) for q, job_id in where]
        )
        return [decode(row) for row in rows]


def _matches(job: Job, f: JobFilter) -> bool:
    return (
        (f.state is None or job.state is f.state)
        and (f.task is None or job.task == f.task)
        and (f.key is None or job.key == f.key)
        and (f.lane is None or job.lane == f.lane)
    )


def pairs(reply: Any) -> list[tuple[bytes, float]]:
    """A `WITHSCORES` reply as (member, score) pairs (flat from the server, paired by
    redis-py's cluster client)."""
    if reply and isinstance(reply[0], (tuple, list)):
        return [(m, float(sc)) for m, sc in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _cursor(after: str | None) -> tuple[int, str]:
    if not after:
        return (0, "")
    seq, _, queue = after.partition("/")
    return (int(seq), queue) if seq.isdigit() else (0, "")
