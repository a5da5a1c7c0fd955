"""`redis+cluster://` against a real three-master Redis Cluster started in a temp dir."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from conveyor.backends.base import ClaimRequest, JobFilter
from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.errors import DependencyError
from conveyor.job import Completed, JobState
from conveyor.testing.contract import BackendContract, make_job

pytestmark = pytest.mark.timeout(120)


def _free_ports(n: int) -> list[int]:
    """`n` ports P whose cluster bus ports (P + 10000) are free too (so P < 55536)."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def cluster_url(redis_server: object) -> Iterator[str]:
    if shutil.which("redis-cli") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-cli is not installed, and CI=true")
        pytest.skip("redis-cli is not installed")
    root = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
    ports = _free_ports(3)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            d = root / str(port)
            d.mkdir()
            log = open(d / "redis.log", "wb")  # noqa: SIM115 - closed with the process
            argv = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--appendonly", "no", "--save", "", "--dir", str(d),
            ]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for port in ports:
            _wait(lambda p=port: _cli("-p", str(p), "ping").stdout.strip() == "PONG", 10)
        made = _cli(
            "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", "0", "--cluster-yes",
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        for port in ports:
            _wait(
                lambda p=port: "cluster_state:ok" in _cli("-p", str(p), "cluster", "info").stdout,
                20,
            )
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("the Redis Cluster did not come up")
        time.sleep(0.05)


@pytest.fixture
def clean_cluster(cluster_url: str) -> str:
    client = redis.RedisCluster.from_url(cluster_url.replace("redis+cluster", "redis"))
    try:
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    finally:
        client.close()
    return cluster_url


class TestRedisClusterBackend(BackendContract):
    @pytest.fixture
    async def backend(self, clock: FakeClock, clean_cluster: str) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(clean_cluster, clock=clock) as b:
            yield b


async def test_queues_land_on_different_nodes_and_work_end_to_end(clean_cluster: str) -> None:
    clock = FakeClock()
    queues = [f"q{i}" for i in range(12)]
    async with RedisBackend(clean_cluster, clock=clock) as b:
        slots = {key_slot(b.keys.route(q).encode()) // 5462 for q in queues}
        assert len(slots) == 3  # the queues really are spread over the three masters
        jobs = [make_job(clock, queue=q) for q in queues for _ in range(5)]
        assert all(await b.enqueue(jobs))
        leases = await b.claim(ClaimRequest(queues, 100, 10, "w"))
        assert len(leases) == 60
        assert [lease.job.queue for lease in leases] == [j.queue for j in jobs]
        done, lost = leases[:30], leases[30:]
        assert all(await b.settle([(lease, Completed(b"1")) for lease in done]))
        clock.advance(11)
        assert await b.rescue() == 30
        again = await b.claim(ClaimRequest(queues, 100, 10, "w"))
        assert sorted(x.id for x in again) == sorted(x.id for x in lost)
        assert all(x.job.errors[-1].type == "LeaseExpired" for x in again)
        counts = await b.counts()
        assert sum(c.get(JobState.RUNNING, 0) for c in counts.values()) == 30
        page = await b.query(JobFilter(state=JobState.COMPLETED), limit=1000)
        assert len(page.jobs) == 30
        fetched = await b.get([j.id for j in jobs])
        assert [j.id for j in fetched if j is not None] == [j.id for j in jobs]


async def test_chains_of_queues_on_different_nodes_in_one_call(clean_cluster: str) -> None:
    """One enqueue with a chain in each of several queues (slots on different masters),
    interleaved: each queue's part is its own script call, and every chain runs in order."""
    clock = FakeClock()
    queues = [f"q{i}" for i in range(6)]
    async with RedisBackend(clean_cluster, clock=clock) as b:
        assert b.cross_queue_dependencies is False
        chains: dict[str, list[str]] = {q: [] for q in queues}
        jobs = []
        for _ in range(4):
            for q in queues:
                parents = tuple(chains[q][-1:])
                job = make_job(clock, queue=q, parents=parents)
                chains[q].append(job.id)
                jobs.append(job)
        assert await b.enqueue(jobs) == [j.id for j in jobs]
        order: list[str] = []
        for _ in range(4):
            leases = await b.claim(ClaimRequest(queues, 100, 10, "w"))
            assert len(leases) == len(queues)  # one step of each chain at a time
            assert all(await b.settle([(lease, Completed(None)) for lease in leases]))
            order += [lease.id for lease in leases]
        for q in queues:
            assert [i for i in order if i in set(chains[q])] == chains[q]
        counts = await b.counts()
        assert all(c == {JobState.COMPLETED: 4} for c in counts.values())


async def test_a_parent_gone_at_write_time_leaves_nothing_in_the_cluster(
    clean_cluster: str,
) -> None:
    """The enqueue script checks parents again (a purge since the base's check): nothing of
    the call is written, not even the id → queue index entries written ahead of it."""
    clock = FakeClock()
    async with RedisBackend(clean_cluster, clock=clock) as b:
        ok = make_job(clock, queue="q1")
        orphan = make_job(clock, queue="q1", parents=("a" * 32,))
        with pytest.raises(DependencyError, match="nothing was written"):
            await b._enqueue([ok, orphan], clock.now())
        assert await b.get([ok.id, orphan.id]) == [None, None]
        client = redis.RedisCluster.from_url(clean_cluster.replace("redis+cluster", "redis"))
        try:
            assert client.hlen(b.keys.idx) == 0
        finally:
            client.close()


async def test_link_in_queues_on_different_nodes(clean_cluster: str) -> None:
    """`link` runs in the child's slot: held callbacks in queues on every master, each
    linked to members of its own queue; a member of another queue is refused (a slot
    apart), nothing changed."""
    clock = FakeClock()
    queues = [f"q{i}" for i in range(6)]
    async with RedisBackend(clean_cluster, clock=clock) as b:
        held = {q: make_job(clock, queue=q, waiting_for=1) for q in queues}
        members = {q: [make_job(clock, queue=q) for _ in range(3)] for q in queues}
        jobs = [*held.values(), *(m for ms in members.values() for m in ms)]
        assert await b.enqueue(jobs) == [j.id for j in jobs]
        with pytest.raises(DependencyError, match="share a queue"):
            await b.link(held["q0"].id, [members["q1"][0].id], holds=-1)
        for q in queues:
            assert await b.link(held[q].id, [m.id for m in members[q]], holds=-1)
        got = await b.get([j.id for j in held.values()])
        assert [(j.state, j.waiting_for) for j in got if j is not None] == [
            (JobState.WAITING, 3)
        ] * len(queues)
        leases = await b.claim(ClaimRequest(queues, 100, 10, "w"))
        assert len(leases) == 3 * len(queues)
        assert all(await b.settle([(lease, Completed(None)) for lease in leases]))
        last = await b.claim(ClaimRequest(queues, 100, 10, "w"))
        assert sorted(x.id for x in last) == sorted(j.id for j in held.values())
