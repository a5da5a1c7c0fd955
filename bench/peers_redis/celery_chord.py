"""Celery's chord on Redis for bench/bench_workflow.py: the app its worker imports and the
client that enqueues the chord and waits for the callback.

Worker: ``celery -A bench.peers_redis.celery_chord worker`` (prefork pool with the default
concurrency, the CPU count). A chord needs a result backend: Redis, on the database in
``BENCH_RESULT_URL`` (the broker is ``BENCH_REDIS_URL``), where each member's end adds its
result to the chord's list and counter and the last one applies the callback.

Client (the peers' venv): ``python -m bench.peers_redis.celery_chord N`` waits until the
worker answers, prints ``ready``, waits for a line on stdin, enqueues
``chord(member.s(i) for i in range(N))(total.s())``, polls the callback's result every
20 ms (not through the result channels, see `main`) and prints one
JSON line of seconds from just before the enqueue call: ``enqueue_s`` (the call),
``first_start_s`` (the first member's start), ``to_callback_s`` (the callback's end), and
``client_cpu_s`` and the callback's ``total``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from celery import Celery, chord, states

app = Celery(
    "bench_celery_chord",
    broker=os.environ["BENCH_REDIS_URL"],
    backend=os.environ["BENCH_RESULT_URL"],
)
app.conf.broker_connection_retry_on_startup = True  # silences a startup deprecation warning


@app.task(name="bench.member")
def member(i: int) -> tuple[int, float]:
    return i, time.time()  # its start, for the span (Celery keeps no start time)


@app.task(name="bench.total")
def total(values: list[tuple[int, float]]) -> tuple[int, float, float]:
    return sum(i for i, _ in values), min(t for _, t in values), time.time()


def main(n: int) -> None:
    member.delay(-1).get(timeout=60)  # the worker is up and answering
    # Celery's Redis backend subscribes the sender to every task's result channel as it is
    # sent (`on_task_call`), and its client then handles each member's message: with 3,000
    # members the enqueue took 5.4 s (1,000: 1.0 s) and the client ran at ~60 % of a core
    # for ~50 s after the callback had ended. We want the chord's time, not that: the
    # sender subscribes to nothing and polls the callback's result key.
    app.backend.on_task_call = lambda producer, task_id: None
    print("ready", flush=True)
    sys.stdin.readline()  # the driver has read the worker's CPU time
    cpu, start = time.process_time(), time.time()
    result = chord(member.s(i) for i in range(n))(total.s())
    enqueued = time.time()
    deadline = time.monotonic() + 600
    while (meta := app.backend.get_task_meta(result.id))["status"] not in states.READY_STATES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the chord's callback did not end in 600 s: {meta}")
        time.sleep(0.02)
    if meta["status"] != states.SUCCESS:
        raise RuntimeError(f"the chord's callback ended {meta['status']}: {meta['result']!r}")
    got, first, end = meta["result"]
    figures = {
        "enqueue_s": enqueued - start,
        "first_start_s": first - start,
        "to_callback_s": end - start,
        "client_cpu_s": time.process_time() - cpu,
        "total": got,
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
