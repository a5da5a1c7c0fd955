"""`index_problems`: where a Redis store's indexes disagree with its job hashes.

Counts and queries read the per-state indexes (``q:<queue>:state:<state>``), claims read
``ready``, promotion reads ``scheduled`` and rescue reads ``running``; each must hold exactly
the jobs of its state. A test that checks this after its steps sees a stale member at once,
instead of later as a job listed twice or a wrong count.
"""

from __future__ import annotations

import redis

from conveyor.job import JobState

__all__ = ["index_problems"]

_RANK_WIDTH = 46  # a ready-set member is the rank (priority, run_at, seq), then the id
_ALSO = {"queued": "ready", "scheduled": "scheduled", "running": "running"}


def index_problems(client: redis.Redis, prefix: str = "conveyor") -> list[str]:
    """Every disagreement between the job hashes under `prefix` (single Redis) and the
    indexes of its queues: a job missing from an index of its state, or a member whose job
    is in another state, another queue, or gone. Empty when the indexes are exact."""
    tag = "{" + prefix + "}"
    keys = list(client.scan_iter(match=f"{tag}:job:*", count=1000))
    with client.pipeline(transaction=False) as pipe:  # one round trip for all the hashes
        for key in keys:
            pipe.hmget(key, "queue", "state")
        rows = pipe.execute()
    jobs = {
        key.decode().partition(":job:")[2]: (queue.decode(), state.decode())
        for key, (queue, state) in zip(keys, rows, strict=True)
        if queue is not None and state is not None
    }
    wanted = [
        (queue, state.value, index)
        for queue in sorted(q.decode() for q in client.smembers(f"{tag}:queues"))
        for state in JobState
        for index in (f"state:{state.value}", _ALSO.get(state.value))
        if index is not None
    ]
    with client.pipeline(transaction=False) as pipe:
        for queue, _, index in wanted:
            pipe.zrange(f"{tag}:q:{queue}:{index}", 0, -1)
        found = pipe.execute()
    problems: list[str] = []
    for (queue, state, index), raw in zip(wanted, found, strict=True):
        members = {m.decode()[_RANK_WIDTH:] if index == "ready" else m.decode() for m in raw}
        should = {i for i, qs in jobs.items() if qs == (queue, state)}
        problems += [f"{i} is missing from {queue}:{index}" for i in sorted(should - members)]
        problems += [
            f"{i} is in {queue}:{index} but is {jobs.get(i, 'gone')}"
            for i in sorted(members - should)
        ]
    return problems
