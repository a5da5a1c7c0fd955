"""`Pipe`, the multiplexed Redis connection, against real redis-server processes.

Covers reply ordering under concurrency and cancellation, error mapping, reconnects across a
server crash, a hung (SIGSTOPped) server, blocking commands, AUTH/SELECT, TLS and `abandon`.
Servers that get killed, paused or configured specially are this module's own (`Server`);
the rest use the session server.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import ssl
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions as rexc

from conveyor.backends.redis.connect import Clients, parse_url
from conveyor.backends.redis.resp import Endpoint, Pipe
from conveyor.testing.redis_server import RedisServer
from tests.redis.servers import Server, ServerDied

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------------------------------------
# Servers of our own (`tests.redis.servers.Server`)


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path) -> Iterator[Server]:
    """A plain redis-server of this test's own (DEBUG enabled), always resumed and stopped."""
    srv = Server(tmp_path, ["--enable-debug-command", "yes"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[Pipe]:
    """A Pipe on the (flushed) session server."""
    p = Pipe(Endpoint.from_url(redis_url, 2.0))
    try:
        yield p
    finally:
        await p.aclose()


async def connections(raw: aioredis.Redis) -> int:
    """How many connections the server has accepted so far."""
    info = await raw.info("stats")
    return int(info["total_connections_received"])


async def blocked(raw: aioredis.Redis, want: int, within: float = 3.0) -> None:
    """Wait until the server has exactly `want` clients blocked (in BLPOP)."""
    deadline = time.monotonic() + within
    while True:
        now = int((await raw.info("clients"))["blocked_clients"])
        if now == want:
            return
        assert time.monotonic() < deadline, f"blocked_clients={now}, wanted {want}"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# 1. Many callers, one connection


async def test_thousands_of_concurrent_calls_get_their_own_replies(
    pipe: Pipe, raw: aioredis.Redis
) -> None:
    """2,000 concurrent ECHO/GET/INCR/SET calls on one warm pipe: each reply is the caller's
    own (values checked), INCRs on a key come back in send order, all on one connection."""
    n = 2_000
    await raw.mset({f"k{i}": f"v{i}" for i in range(n)})
    assert await pipe.call("PING") == b"PONG"
    before = await connections(raw)

    async def one(i: int) -> object:
        kind = i % 4
        if kind == 0:
            return await pipe.call("ECHO", f"e{i}")
        if kind == 1:
            return await pipe.call("GET", f"k{i}")
        if kind == 2:
            return await pipe.call("INCR", f"c{i % 3}")
        return await pipe.call("SET", f"s{i}", f"x{i}")

    replies = await asyncio.gather(*(one(i) for i in range(n)))
    counts = {0: 0, 1: 0, 2: 0}
    for i, reply in enumerate(replies):
        kind = i % 4
        if kind == 0:
            assert reply == f"e{i}".encode(), (i, reply)
        elif kind == 1:
            assert reply == f"v{i}".encode(), (i, reply)
        elif kind == 2:
            counts[i % 3] += 1
            assert reply == counts[i % 3], (i, reply)  # sent in order, so counted in order
        else:
            assert reply == b"OK", (i, reply)
    stored = await raw.mget([f"s{i}" for i in range(3, n, 4)])
    assert stored == [f"x{i}".encode() for i in range(3, n, 4)]
    assert await connections(raw) == before  # no reconnect along the way


async def test_concurrent_first_calls_share_one_connect(pipe: Pipe, raw: aioredis.Redis) -> None:
    """500 calls on a cold pipe wait for one shared connect and still get their own replies."""
    await raw.ping()
    before = await connections(raw)
    replies = await asyncio.gather(*(pipe.call("ECHO", str(i)) for i in range(500)))
    assert replies == [str(i).encode() for i in range(500)]
    assert await connections(raw) == before + 1


async def test_many_returns_replies_in_order(pipe: Pipe) -> None:
    """`many` sends a batch in one write and returns each command's reply in order."""
    replies = await pipe.many(
        [
            ("SET", "a", "1"),
            ("INCR", "a"),
            ("GET", "a"),
            ("RPUSH", "l", "x", "y"),
            ("LRANGE", "l", 0, -1),
            ("GET", "missing"),
            ("ECHO", "last"),
        ]
    )
    assert replies == [b"OK", 2, b"2", 2, [b"x", b"y"], None, b"last"]
    assert await pipe.many([]) == []


async def test_many_raises_the_server_error_and_the_pipe_stays_in_step(pipe: Pipe) -> None:
    """A bad command in `many` raises ResponseError; the batch's later replies are dropped,
    not handed to the next callers, and the pipe keeps working on the same connection."""
    await pipe.call("SET", "a", "1")
    conn_id = await pipe.call("CLIENT", "ID")
    with pytest.raises(rexc.ResponseError, match="unknown command"):
        await pipe.many([("GET", "a"), ("NOSUCHCOMMAND", "x"), ("ECHO", "stale"), ("GET", "a")])
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"):
        await pipe.many([("LPUSH", "a", "x"), ("ECHO", "stale")])
    after = await asyncio.gather(pipe.call("ECHO", "fresh"), pipe.call("INCR", "a"))
    assert list(after) == [b"fresh", 2]
    assert await pipe.many([("GET", "a"), ("ECHO", "b")]) == [b"2", b"b"]
    assert await pipe.call("CLIENT", "ID") == conn_id


# ---------------------------------------------------------------------------------------------
# 2. Server errors


async def test_server_errors_map_to_redis_py_classes(pipe: Pipe) -> None:
    """Error replies become redis-py's exceptions: WRONGTYPE and unknown commands are
    ResponseError, NOSCRIPT is NoScriptError, a script's error is ResponseError."""
    await pipe.call("SET", "s", "v")
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE") as wrong:
        await pipe.call("LPUSH", "s", "x")
    assert not isinstance(wrong.value, rexc.ConnectionError)
    with pytest.raises(rexc.ResponseError, match="unknown command"):
        await pipe.call("NOSUCHCOMMAND")
    with pytest.raises(rexc.NoScriptError):
        await pipe.call("EVALSHA", "0" * 40, 0)
    failing = pipe.script("return redis.error_reply('BOOM went the script')")
    with pytest.raises(rexc.ResponseError, match="BOOM went the script"):
        await failing()
    assert await pipe.call("GET", "s") == b"v"  # still in step after all that


async def test_script_reloads_after_script_flush(pipe: Pipe) -> None:
    """A PipeScript loads itself on NOSCRIPT, including after SCRIPT FLUSH: no NoScriptError
    reaches the caller."""
    script = pipe.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await pipe.call("SCRIPT", "EXISTS", script.sha) == [0]
    assert await script(["n"], [5]) == 5
    assert await pipe.call("SCRIPT", "EXISTS", script.sha) == [1]
    assert await script(["n"], [2]) == 7
    assert await pipe.call("SCRIPT", "FLUSH") == b"OK"
    assert await pipe.call("SCRIPT", "EXISTS", script.sha) == [0]
    assert await script(["n"], [3]) == 10
    results = await asyncio.gather(*(script(["m"], [1]) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


# ---------------------------------------------------------------------------------------------
# 3. A server that crashes and comes back


async def test_reconnects_to_a_restarted_server(server: Server) -> None:
    """SIGKILL the server and start a new one on the same port: the pipe's next call
    reconnects and succeeds (on the new, empty server)."""
    pipe = Pipe(Endpoint.from_url(server.url, 2.0))
    try:
        assert await pipe.call("SET", "k", "old") == b"OK"
        run_id = server.info("server")["run_id"]
        server.kill()
        server.start()
        assert server.info("server")["run_id"] != run_id
        async with asyncio.timeout(5):
            assert await pipe.call("GET", "k") is None  # the new server has no data
            assert await pipe.call("SET", "k", "new") == b"OK"
            assert await pipe.call("GET", "k") == b"new"
    finally:
        await pipe.aclose()


async def test_calls_fail_fast_while_the_server_is_down_then_recover(server: Server) -> None:
    """While the server is down, calls (and `many`) fail with ConnectionError within the
    retry budget instead of hanging; after a restart the same pipe works again."""
    pipe = Pipe(Endpoint.from_url(server.url, 2.0))
    try:
        assert await pipe.call("PING") == b"PONG"
        server.kill()
        began = time.monotonic()
        async with asyncio.timeout(5):
            with pytest.raises(rexc.ConnectionError):
                await pipe.call("SET", "k", "v")
            outcomes = await asyncio.gather(
                *(pipe.call("ECHO", str(i)) for i in range(20)), return_exceptions=True
            )
            with pytest.raises(rexc.ConnectionError):
                await pipe.many([("GET", "k")])
        assert all(isinstance(o, rexc.ConnectionError) for o in outcomes), outcomes
        assert time.monotonic() - began < 3.0
        server.start()
        async with asyncio.timeout(5):
            replies = await asyncio.gather(*(pipe.call("ECHO", str(i)) for i in range(20)))
            assert replies == [str(i).encode() for i in range(20)]
            assert await pipe.many([("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
    finally:
        await pipe.aclose()


# ---------------------------------------------------------------------------------------------
# 4. A hung server


async def test_hung_server_times_out_then_the_pipe_recovers(server: Server) -> None:
    """With the server SIGSTOPped, a call with socket_timeout=0.5 raises TimeoutError (or
    ConnectionError) within a few seconds, retries included; after SIGCONT it works."""
    pipe = Pipe(Endpoint.from_url(server.url, 0.5))
    try:
        assert await pipe.call("SET", "k", "v") == b"OK"
        server.pause()
        try:
            began = time.monotonic()
            with pytest.raises((rexc.TimeoutError, rexc.ConnectionError)):
                async with asyncio.timeout(8):  # a hang fails as TimeoutError (builtin)
                    await pipe.call("GET", "k")
            elapsed = time.monotonic() - began
        finally:
            server.resume()
        assert 0.5 <= elapsed < 5.0, elapsed  # about 5 x 0.5 s plus backoff
        async with asyncio.timeout(5):
            assert await pipe.call("GET", "k") == b"v"
    finally:
        await pipe.aclose()


async def test_a_hung_call_is_retried_at_most_three_times(server: Server) -> None:
    """The module doc promises "retried up to three times": a hung call makes at most four
    attempts (the first on its open connection, then three on fresh ones) before it fails."""
    pipe = Pipe(Endpoint.from_url(server.url, 0.25))
    try:
        assert await pipe.call("PING") == b"PONG"
        before = int(server.info("stats")["total_connections_received"])
        server.pause()
        try:
            with pytest.raises(rexc.TimeoutError):
                async with asyncio.timeout(8):
                    await pipe.call("PING")
        finally:
            server.resume()
        # The info client's own connection is the +1.
        fresh = int(server.info("stats")["total_connections_received"]) - before - 1
        assert fresh <= 3, f"{fresh} reconnects: {1 + fresh} attempts"
    finally:
        await pipe.aclose()


# ---------------------------------------------------------------------------------------------
# 5. Blocking commands


async def test_blpop_block_time_extends_the_watchdog(redis_url: str, raw: aioredis.Redis) -> None:
    """`BLPOP k 0.5` with block=0.5 on socket_timeout=0.3 returns None after ~0.5 s on the
    same connection (the watchdog allows block + timeout); without `block` it would trip."""
    await raw.ping()
    pipe = Pipe(Endpoint.from_url(redis_url, 0.3))
    try:
        before = await connections(raw)
        began = time.monotonic()
        assert await pipe.call("BLPOP", "q", "0.5", block=0.5) is None  # first call: cold
        first = time.monotonic() - began
        conn_id = await pipe.call("CLIENT", "ID")
        began = time.monotonic()
        assert await pipe.call("BLPOP", "q", "0.5", block=0.5) is None  # warm
        second = time.monotonic() - began
        assert 0.45 <= first < 1.2 and 0.45 <= second < 1.2, (first, second)
        assert await pipe.call("CLIENT", "ID") == conn_id
        assert await connections(raw) == before + 1  # never timed out and reconnected

        async def push_later() -> None:
            await asyncio.sleep(0.1)
            await raw.rpush("q", "item")

        pusher = asyncio.create_task(push_later())
        assert await pipe.call("BLPOP", "q", "2", block=2.0) == [b"q", b"item"]
        await pusher
    finally:
        await pipe.aclose()
    # The control: the same BLPOP without `block` outlives socket_timeout and fails.
    short = Pipe(Endpoint.from_url(redis_url, 0.1))
    try:
        with pytest.raises(rexc.TimeoutError):
            await short.call("BLPOP", "q", "0.5")
    finally:
        await short.aclose()


async def test_cancelled_blpop_breaks_nothing_else(redis_url: str, raw: aioredis.Redis) -> None:
    """A `Conn.blpop` cancelled while blocked unblocks its command (the server sees no
    blocked client) and leaves the main pipe and later BLPOPs working."""
    clients = Clients(parse_url(redis_url))
    conn = clients.get()
    other = Pipe(Endpoint.from_url(redis_url, 2.0))
    try:
        assert await conn.call("SET", "k", "v") == b"OK"
        assert await other.call("PING") == b"PONG"
        waiter = asyncio.create_task(conn.blpop(["q"], 5.0))
        await blocked(raw, 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(conn.blockers) == 1  # unblocked and answered: clean to reuse
        assert await conn.call("GET", "k") == b"v"
        assert await other.call("ECHO", "fine") == b"fine"
        await blocked(raw, 0)
        await raw.rpush("q", "job")
        assert await raw.llen("q") == 1  # nobody is left to swallow it
        assert await conn.blpop(["q"], 1.0) == [b"q", b"job"]
        assert len(conn.blockers) == 1  # kept for the next wait
        assert await conn.blpop(["q"], 0.1) is None
    finally:
        await other.aclose()
        await clients.aclose()


# ---------------------------------------------------------------------------------------------
# 6. Cancellation


async def test_cancelled_slow_call_does_not_shift_replies(server: Server) -> None:
    """A caller cancelled while `DEBUG SLEEP 0.2` is in flight: its reply is dropped in
    order, so the GET queued behind it gets its own value, on the same connection."""
    pipe = Pipe(Endpoint.from_url(server.url, 2.0))
    try:
        await pipe.call("SET", "k", "v")
        conn_id = await pipe.call("CLIENT", "ID")
        slow = asyncio.create_task(pipe.call("DEBUG", "SLEEP", "0.2"))
        await asyncio.sleep(0.05)  # sent; its +OK is on its way
        after = asyncio.create_task(pipe.call("GET", "k"))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await after == b"v"
        assert await pipe.call("ECHO", "next") == b"next"
        assert await pipe.call("CLIENT", "ID") == conn_id
    finally:
        await pipe.aclose()


async def test_cancelled_blpop_reply_goes_nowhere(pipe: Pipe, raw: aioredis.Redis) -> None:
    """A BLPOP whose caller is cancelled, then served by an RPUSH: its [key, item] reply is
    dropped, and the GET queued behind it on the same pipe gets b"v"."""
    await raw.set("k", "v")
    pop = asyncio.create_task(pipe.call("BLPOP", "q", "2", block=2.0))
    await blocked(raw, 1)
    get = asyncio.create_task(pipe.call("GET", "k"))
    await asyncio.sleep(0)
    pop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pop
    await raw.rpush("q", "item")
    assert await get == b"v"
    assert await pipe.call("ECHO", "x") == b"x"


async def test_cancelling_every_third_caller_keeps_the_rest_in_step(pipe: Pipe) -> None:
    """300 calls in flight, every third cancelled: the other 200 get exactly their own."""
    await pipe.call("PING")
    tasks = [asyncio.create_task(pipe.call("ECHO", f"r{i}")) for i in range(300)]
    await asyncio.sleep(0)  # every call is written; no reply has been read yet
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError), (i, result)
        else:
            assert result == f"r{i}".encode(), (i, result)
    assert await pipe.call("ECHO", "end") == b"end"


async def test_cancelling_the_connecting_caller_spares_the_others(redis_url: str) -> None:
    """Two calls on a cold pipe; the one that started the connect is cancelled mid-connect.
    The other (waiting for that connect) is not cancelled and must get its reply."""
    pipe = Pipe(Endpoint.from_url(redis_url.removesuffix("/0") + "/2", 2.0))  # SELECT in hello
    try:
        first = asyncio.create_task(pipe.call("ECHO", "first"))
        second = asyncio.create_task(pipe.call("ECHO", "second"))
        await asyncio.sleep(0)  # first is opening the connection, second waits on it
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        async with asyncio.timeout(5):
            assert await second == b"second"
    finally:
        await pipe.aclose()


# ---------------------------------------------------------------------------------------------
# 7. AUTH and SELECT


@pytest.fixture
def acl_server(redis_server: RedisServer, tmp_path: Path) -> Iterator[Server]:
    """A server with a password on the default user, `alice` (all rights) and `bob` (reads)."""
    srv = Server(
        tmp_path,
        [
            "--requirepass", "defpass",
            "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all",
            "--user", "bob", "on", ">bobpw", "~*", "&*", "+@read", "+ping",
        ],
    )  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_acl_user_and_database_from_the_url(acl_server: Server) -> None:
    """`redis://alice:s3cret@host/3`: the pipe authenticates as alice and writes to db 3, and
    does both again after its connection is killed."""
    port = acl_server.port
    pipe = Pipe(Endpoint.from_url(f"redis://alice:s3cret@127.0.0.1:{port}/3", 2.0))
    db3 = redis.Redis(port=port, username="alice", password="s3cret", db=3)
    db0 = redis.Redis(port=port, username="alice", password="s3cret", db=0)
    try:
        assert await pipe.call("SET", "k", "in-three") == b"OK"
        assert await pipe.call("ACL", "WHOAMI") == b"alice"
        assert db3.get("k") == b"in-three"
        assert db0.get("k") is None
        conn_id = await pipe.call("CLIENT", "ID")
        db0.client_kill_filter(_id=conn_id)
        assert await pipe.call("SET", "k2", "again") == b"OK"  # reconnected: AUTH + SELECT
        assert await pipe.call("CLIENT", "ID") != conn_id
        assert await pipe.call("ACL", "WHOAMI") == b"alice"
        assert db3.get("k2") == b"again" and db0.get("k2") is None
    finally:
        await pipe.aclose()
        db3.close()
        db0.close()


async def test_password_only_url_authenticates_the_default_user(acl_server: Server) -> None:
    """`redis://:password@host/0` sends `AUTH password` (the default user)."""
    pipe = Pipe(Endpoint.from_url(f"redis://:defpass@127.0.0.1:{acl_server.port}/0", 2.0))
    try:
        assert await pipe.call("ACL", "WHOAMI") == b"default"
    finally:
        await pipe.aclose()


@pytest.mark.parametrize(
    ("userinfo", "match"),
    [("alice:wrong@", "WRONGPASS"), ("nobody:s3cret@", "WRONGPASS"), ("", "NOAUTH")],
)
async def test_bad_credentials_fail_fast_with_authentication_error(
    acl_server: Server, userinfo: str, match: str
) -> None:
    """A wrong password, an unknown user or no password at all: AuthenticationError naming
    the cause, within the retry budget, not a hang."""
    pipe = Pipe(Endpoint.from_url(f"redis://{userinfo}127.0.0.1:{acl_server.port}/3", 2.0))
    try:
        began = time.monotonic()
        async with asyncio.timeout(5):
            with pytest.raises(rexc.AuthenticationError, match=match):
                await pipe.call("GET", "k")
        assert time.monotonic() - began < 2.0
    finally:
        await pipe.aclose()


async def test_acl_denial_is_no_permission_error(acl_server: Server) -> None:
    """A command the ACL user may not run raises NoPermissionError (a ResponseError)."""
    pipe = Pipe(Endpoint.from_url(f"redis://bob:bobpw@127.0.0.1:{acl_server.port}/0", 2.0))
    try:
        assert await pipe.call("GET", "k") is None
        with pytest.raises(rexc.NoPermissionError, match="NOPERM"):
            await pipe.call("SET", "k", "v")
        assert await pipe.call("PING") == b"PONG"
    finally:
        await pipe.aclose()


# ---------------------------------------------------------------------------------------------
# 8. abandon()


def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def _run_and_abandon(url: str, *, abandon: bool) -> tuple[list[str], int]:
    """Use a pipe on a loop that then stops; abandon it (or not) from the main thread.
    Returns the ResourceWarnings seen and the pipe's server-side client id."""

    async def use() -> tuple[Pipe, int]:
        pipe = Pipe(Endpoint.from_url(url, 2.0))
        assert await pipe.call("ECHO", "hi") == b"hi"
        client_id: int = await pipe.call("CLIENT", "ID")
        return pipe, client_id

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe, client_id = asyncio.run(use())
        if abandon:
            pipe.abandon()
            with pytest.raises(rexc.ConnectionError):  # and it stays closed
                asyncio.run(pipe.call("PING"))
        del pipe
        gc.collect()
    return _resource_warnings(caught), client_id


def _client_gone(port: int, client_id: int, within: float = 3.0) -> bool:
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(int(c["id"]) != client_id for c in client.client_list()):
                return True
            time.sleep(0.01)
        return False
    finally:
        client.close()


def test_abandon_after_the_loop_stopped_closes_the_socket_quietly(redis_url: str) -> None:
    """`abandon()` from the main thread after `asyncio.run` ended: no ResourceWarning, and the
    server sees the connection close. (Control: without it, the leak does warn.)"""
    found, client_id = _run_and_abandon(redis_url, abandon=True)
    assert found == []
    assert _client_gone(Endpoint.from_url(redis_url, 1.0).port, client_id)
    leaked, _ = _run_and_abandon(redis_url, abandon=False)
    assert any("unclosed" in w for w in leaked), leaked


# ---------------------------------------------------------------------------------------------
# 9. TLS


@dataclass(frozen=True)
class Tls:
    port: int
    ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _make_certs(root: Path) -> None:
    """A throwaway CA, and a server certificate it signed for DNS:localhost only."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=conveyor test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=root,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=root,
    )  # fmt: skip
    (root / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=root,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tls]:
    """redis-server with TLS only, on a throwaway CA. Without TLS in redis-server or without
    the openssl CLI: skipped locally, failed when CI=true."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the openssl CLI is not installed, and CI=true")
        pytest.skip("the openssl CLI is not installed")
    root = tmp_path_factory.mktemp("tls")
    _make_certs(root)
    srv = Server(
        root,
        [
            "--tls-cert-file", str(root / "server.crt"),
            "--tls-key-file", str(root / "server.key"),
            "--tls-ca-cert-file", str(root / "ca.crt"),
            "--tls-auth-clients", "no",
        ],
        tls=True,
    )  # fmt: skip
    try:
        srv.start()
    except ServerDied as exc:
        text = str(exc)
        lowered = text.lower()
        unsupported = ("not supported", "not compiled", "bad directive", "built without")
        if "tls" in lowered and any(u in lowered for u in unsupported):
            message = f"this redis-server was built without TLS: {text.strip()[-300:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message} (Debian's has TLS), and CI=true")
            pytest.skip(message)
        raise
    try:
        yield Tls(srv.port, root / "ca.crt")
    finally:
        srv.stop()


async def test_tls_with_the_ca_works(tls_server: Tls) -> None:
    """`rediss://localhost:P/0?ssl_ca_certs=<ca>`: the certificate checks out; calls work,
    over TLS (the server counts the connection as TLS)."""
    url = f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs={tls_server.ca}"
    pipe = Pipe(Endpoint.from_url(url, 2.0))
    try:
        async with asyncio.timeout(5):
            replies = await asyncio.gather(*(pipe.call("ECHO", str(i)) for i in range(100)))
            assert replies == [str(i).encode() for i in range(100)]
            assert await pipe.many([("SET", "t", "1"), ("GET", "t")]) == [b"OK", b"1"]
            info = await pipe.call("CLIENT", "INFO")
        assert b"laddr=" in info  # a normal client line came back through TLS
    finally:
        await pipe.aclose()


async def test_tls_without_the_ca_is_refused(tls_server: Tls) -> None:
    """`rediss://localhost:P/0` without the CA: certificate verification fails, surfaced as
    ConnectionError (caused by an SSL error), promptly; it never silently connects."""
    pipe = Pipe(Endpoint.from_url(f"rediss://localhost:{tls_server.port}/0", 2.0))
    try:
        began = time.monotonic()
        async with asyncio.timeout(5):
            with pytest.raises((rexc.ConnectionError, ssl.SSLError)) as failed:
                await pipe.call("PING")
        assert time.monotonic() - began < 3.0
        exc: BaseException | None = failed.value
        chain = []
        while exc is not None:
            chain.append(exc)
            exc = exc.__cause__
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in chain), chain
        assert "certificate verify failed" in str(failed.value)
    finally:
        await pipe.aclose()


async def test_tls_checks_the_host_name(tls_server: Tls) -> None:
    """The certificate names only `localhost`: reaching it as 127.0.0.1 fails the host name
    check, unless the URL turns that check off (`ssl_check_hostname=false`)."""
    base = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={tls_server.ca}"
    strict = Pipe(Endpoint.from_url(base, 2.0))
    lax = Pipe(Endpoint.from_url(f"{base}&ssl_check_hostname=false", 2.0))
    try:
        async with asyncio.timeout(5):
            with pytest.raises(rexc.ConnectionError, match="certificate verify failed"):
                await strict.call("PING")
            assert await lax.call("PING") == b"PONG"
    finally:
        await strict.aclose()
        await lax.aclose()


async def test_tls_cert_reqs_none_skips_verification(tls_server: Tls) -> None:
    """`?ssl_cert_reqs=none`: no CA, no host name check, and it connects."""
    pipe = Pipe(
        Endpoint.from_url(f"rediss://127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=none", 2.0)
    )
    try:
        async with asyncio.timeout(5):
            assert await pipe.call("ECHO", "plain") == b"plain"
    finally:
        await pipe.aclose()


def test_abandon_closes_a_tls_socket_quietly(tls_server: Tls) -> None:
    """`abandon()` on a TLS pipe after its loop stopped: no ResourceWarning either."""
    url = f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs={tls_server.ca}"
    found, _ = _run_and_abandon(url, abandon=True)
    assert found == []


async def test_a_blpop_cancelled_after_its_pop_hands_the_element_to_on_lost(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """The server popped for us, then the caller was cancelled before reading the reply:
    the element is not lost, it goes to `on_lost`."""
    clients = Clients(parse_url(redis_url))
    conn = clients.get()
    lost: list[object] = []
    try:
        for attempt in range(200):
            waiter = asyncio.create_task(conn.blpop(["q"], 5.0, lost.append))
            await blocked(raw, 1)
            await raw.rpush("q", f"job{attempt}")  # popped by the blocked BLPOP at once
            waiter.cancel()  # usually before our loop has read the reply
            result = (await asyncio.gather(waiter, return_exceptions=True))[0]
            got = [result] if isinstance(result, list) else []
            assert [*got, *lost] == [[b"q", f"job{attempt}".encode()]], (got, lost)
            if lost:
                break
        assert lost, "never cancelled between the pop and the read in 200 tries"
        assert await raw.llen("q") == 0
    finally:
        await clients.aclose()
