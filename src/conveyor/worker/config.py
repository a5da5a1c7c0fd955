"""Worker configuration and queue selection (strict order or weighted shuffle)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.errors import ConfigError
from conveyor.names import check_queue

__all__ = ["QueueSelector", "WorkerConfig", "parse_queues"]


def parse_queues(spec: str | Sequence[str] | None) -> tuple[tuple[str, int], ...]:
    """Parse ``"critical=6,default=3,low=1"`` (or a list of such items) into weighted queues.

    A queue without ``=w`` has weight 1.
    """
    if spec is None:
        return (("default", 1),)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, weight = item.partition("=")
        try:
            w = int(weight) if sep else 1
        except ValueError:
            raise ConfigError(f"queue weight in {item!r} must be a whole number") from None
        if w < 1:
            raise ConfigError(f"queue weight in {item!r} must be >= 1")
        if any(name == seen for seen, _ in out):
            raise ConfigError(f"queue {name!r} is listed twice")
        out.append((check_queue(name.strip()), w))
    if not out:
        raise ConfigError("no queues given")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How a worker runs. Every field has a working default.

    Attributes:
        queues: (name, weight) pairs, in priority order for `strict` (`App.worker()`
            without queues: ``default`` and every queue the app's tasks declare).
        strict: take queues strictly in order (a lower queue runs only when the ones
            before it are empty) instead of weighted random order per claim.
        concurrency: jobs running at once in this process.
        threads: threads for synchronous handlers (default: `concurrency`).
        lease_for: seconds a claim lasts without a heartbeat. A worker that dies loses its
            jobs to others after at most this long plus `sweep_every`.
        heartbeat_every: seconds between heartbeats (default: `lease_for / 4`).
        grace: seconds a graceful stop waits for running jobs before cancelling them.
        poll: longest idle wait between claim attempts (backends also wake workers early).
        claim_batch: most jobs claimed in one round trip.
        burst: stop when there is no more ready work (for tests and batch runs).
        maintenance: run the maintenance loop (promote, rescue, purge) in this worker.
        sweep_every: seconds between promote/rescue sweeps.
        purge_every: seconds between purges of expired results.
        failed_retention: seconds failed (dead-letter) jobs are kept.
        scheduler: run the scheduler (periodic jobs of `app.periodic` / `app.schedule`) in
            this worker; every worker may, the store keeps one job per fire.
        hook_timeout: seconds each failure hook (`app.on_failure`, `app.on_dead_letter`)
            may run before it is abandoned (and logged).
        name: the worker's name in leases and logs (default: host:pid).
        presence: beat in the store's `Presence` every `presence_every` seconds (host, pid,
            queues, running jobs; ``conveyor inspect workers``, the dashboard). A worker
            not heard from for three beats is gone. None (the default): when the store
            has `Presence`; True: a store without it is a `ConfigError`.
        rollups: add each settled attempt to the store's per-minute `Rollups`
            (`inspector.metrics`), written about once a second; kept `rollup_retention`
            seconds. None (the default): when the store has `Rollups`.
        metrics_port: serve ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` on
            this port (``conveyor[metrics]``); 0 picks a free port; None: no server.
        metrics_host: the address the metrics server binds.
        block_threshold: report the event loop blocked for longer than this many
            seconds (logged once with the offending stack, counted); None: don't watch.
    """

    queues: tuple[tuple[str, int], ...] = (("default", 1),)
    strict: bool = False
    concurrency: int = 16
    threads: int | None = None
    lease_for: float = 5.0
    heartbeat_every: float | None = None
    grace: float = 10.0
    poll: float = 1.0
    claim_batch: int = 100
    burst: bool = False
    maintenance: bool = True
    sweep_every: float = 1.0
    purge_every: float = 60.0
    failed_retention: float = 7 * 86_400.0
    scheduler: bool = True
    hook_timeout: float = 5.0
    name: str | None = field(default=None)
    presence: bool | None = None
    presence_every: float = 5.0
    rollups: bool | None = None
    rollup_retention: float = 7 * 86_400.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    block_threshold: float | None = 1.0

    def __post_init__(self) -> None:
        for attr in ("concurrency", "claim_batch"):
            if getattr(self, attr) < 1:
                raise ConfigError(f"WorkerConfig.{attr} must be >= 1")
        for attr in (
            "lease_for", "grace", "poll", "sweep_every", "purge_every", "hook_timeout",
            "presence_every", "rollup_retention",
        ):  # fmt: skip
            if getattr(self, attr) <= 0 and attr != "grace":
                raise ConfigError(f"WorkerConfig.{attr} must be > 0")
        if self.grace < 0:
            raise ConfigError("WorkerConfig.grace must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("WorkerConfig.threads must be >= 1")
        if self.heartbeat_every is not None and not 0 < self.heartbeat_every < self.lease_for:
            raise ConfigError("WorkerConfig.heartbeat_every must be > 0 and < lease_for")
        if not self.queues:
            raise ConfigError("WorkerConfig.queues is empty")
        port = self.metrics_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 <= port <= 65535):  # fmt: skip
            raise ConfigError(f"WorkerConfig.metrics_port must be a port 0-65535, not {port!r}")
        if self.block_threshold is not None and not self.block_threshold > 0:
            raise ConfigError("WorkerConfig.block_threshold must be > 0 (or None: off)")

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats."""
        return self.heartbeat_every or self.lease_for / 4

    @property
    def queue_names(self) -> list[str]:
        """The queue names in configured order."""
        return [name for name, _ in self.queues]


class QueueSelector:
    """The order in which to try queues for one claim.

    Strict: always the configured order. Weighted: a random order where each queue comes
    first with probability proportional to its weight (weighted sampling without
    replacement), so a busy high-weight queue cannot starve the others.
    """

    def __init__(
        self, queues: Sequence[tuple[str, int]], strict: bool, rng: random.Random | None = None
    ) -> None:
        self._queues = list(queues)
        self._strict = strict or len(queues) == 1
        self._rng = rng or random.Random()
        self._names = [n for n, _ in queues]

    def order(self) -> list[str]:
        if self._strict:
            return self._names
        # Efraimidis-Spirakis: sort by u ** (1 / w), descending.
        keyed = [(self._rng.random() ** (1.0 / w), n) for n, w in self._queues]
        keyed.sort(reverse=True)
        return [n for _, n in keyed]
