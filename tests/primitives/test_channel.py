"""Tests of Channel: bounds, waiting, close and drain, cancellation, rendezvous."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.errors import ClosedError, QueueFull
from conveyor.primitives import Channel

from .helpers import spin


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        Channel[int](-1)


async def test_fifo_within_capacity_and_full_raises() -> None:
    ch: Channel[int] = Channel(2)
    ch.send_nowait(1)
    await ch.send(2)
    with pytest.raises(QueueFull):
        ch.send_nowait(3)
    assert [await ch.receive(), ch.receive_nowait()] == [1, 2]
    with pytest.raises(asyncio.QueueEmpty):
        ch.receive_nowait()


async def test_send_waits_while_full() -> None:
    ch: Channel[int] = Channel(1)
    await ch.send(1)
    blocked = asyncio.ensure_future(ch.send(2))
    await spin()
    assert not blocked.done()
    assert ch.statistics().waiting_senders == 1
    assert await ch.receive() == 1
    await blocked
    assert await ch.receive() == 2


async def test_receive_waits_for_an_item() -> None:
    ch: Channel[str] = Channel(1)
    waiting = asyncio.ensure_future(ch.receive())
    await spin()
    assert ch.statistics().waiting_receivers == 1
    await ch.send("x")
    assert await waiting == "x"


async def test_iteration_drains_then_stops_when_closed() -> None:
    ch: Channel[int] = Channel(5)
    for i in range(3):
        await ch.send(i)
    ch.close()
    with pytest.raises(ClosedError):
        await ch.send(9)
    assert [i async for i in ch] == [0, 1, 2]
    with pytest.raises(ClosedError, match="drained"):
        await ch.receive()


async def test_close_wakes_waiting_receivers_and_fails_blocked_senders() -> None:
    ch: Channel[int] = Channel(1)
    receiver_ch: Channel[int] = Channel(1)
    idle = asyncio.ensure_future(receiver_ch.receive())
    await ch.send(1)
    blocked = asyncio.ensure_future(ch.send(2))
    await spin()
    ch.close()
    receiver_ch.close()
    with pytest.raises(ClosedError):
        await blocked
    with pytest.raises(ClosedError):
        await idle
    assert [i async for i in ch] == [1]
    ch.close()  # idempotent
    assert ch.statistics().closed


async def test_cancelled_sender_leaves_nothing_behind() -> None:
    ch: Channel[int] = Channel(1)
    await ch.send(1)
    doomed = asyncio.ensure_future(ch.send(2))
    await spin()
    doomed.cancel()
    await spin()
    assert ch.statistics().waiting_senders == 0
    assert await ch.receive() == 1
    with pytest.raises(asyncio.QueueEmpty):
        ch.receive_nowait()


async def test_cancelled_receiver_never_loses_an_item() -> None:
    ch: Channel[int] = Channel(1)
    first = asyncio.ensure_future(ch.receive())
    second = asyncio.ensure_future(ch.receive())
    await spin()
    ch.send_nowait(7)  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: the wake-up passes on
    assert await second == 7
    assert first.cancelled()


async def test_rendezvous_send_completes_when_received() -> None:
    ch: Channel[int] = Channel(0)
    with pytest.raises(QueueFull):
        ch.send_nowait(1)  # no receiver waiting
    sending = asyncio.ensure_future(ch.send(1))
    await spin()
    assert not sending.done()
    assert ch.statistics().size == 0
    assert await ch.receive() == 1
    await sending
    receiving = asyncio.ensure_future(ch.receive())
    await spin()
    ch.send_nowait(2)  # a receiver is waiting: handed over
    assert await receiving == 2


async def test_many_producers_and_consumers_deliver_everything_once() -> None:
    ch: Channel[int] = Channel(3)
    got: list[int] = []

    async def produce(start: int) -> None:
        for i in range(start, start + 50):
            await ch.send(i)

    async def consume() -> None:
        async for i in ch:
            got.append(i)

    async with asyncio.TaskGroup() as tg:
        consumers = [tg.create_task(consume()) for _ in range(4)]
        async with asyncio.TaskGroup() as producers:
            for p in range(5):
                producers.create_task(produce(p * 50))
        ch.close()
    assert all(c.done() for c in consumers)
    assert sorted(got) == list(range(250))
