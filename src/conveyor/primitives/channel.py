"""Channel: a bounded, closeable queue between tasks in one event loop.

Example:
    channel: Channel[int] = Channel(capacity=10)
    await channel.send(1)
    channel.close()
    async for value in channel:   # yields 1, then stops: closed and drained
        print(value)
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from conveyor.errors import ClosedError, ConfigError, QueueFull

__all__ = ["Channel", "ChannelStats"]

T = TypeVar("T")


class _Empty(enum.Enum):
    EMPTY = enum.auto()


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel.

    Attributes:
        size: items buffered now.
        capacity: most items buffered.
        waiting_senders: `send` calls waiting for room (or, at capacity 0, for a receiver).
        waiting_receivers: `receive` calls waiting for an item.
        closed: whether `close()` was called.
    """

    size: int
    capacity: int
    waiting_senders: int
    waiting_receivers: int
    closed: bool


class Channel(Generic[T]):
    """A bounded first-in-first-out channel; `send` waits while it is full.

    `capacity=0` makes a rendezvous channel: `send` returns once a receiver took the item.
    After `close()`, sends raise `ClosedError`, senders still waiting get `ClosedError` (their
    items were not accepted), and receivers drain what is buffered, then get `ClosedError`
    (`async for` simply stops). A `send` cancelled at the moment its item was taken may
    raise `CancelledError` although the item was delivered; a cancelled `receive` never
    loses an item.

    Args:
        capacity: most items buffered (>= 0).

    Example:
        async with asyncio.TaskGroup() as tg:
            channel: Channel[str] = Channel(capacity=100)
            tg.create_task(produce(channel))   # sends, then channel.close()
            async for line in channel:
                print(line)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ConfigError(f"Channel capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._buffer: deque[T] = deque()
        # Blocked senders keep their item until it is taken: (item, waiter). A waiter of
        # None marks an item handed to a waiting receiver by `send_nowait` at capacity 0.
        self._senders: deque[tuple[T, asyncio.Future[None] | None]] = deque()
        # Receivers are only woken; they take items themselves, so cancelling one
        # can never lose an item.
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def capacity(self) -> int:
        """The most items buffered."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (items may still be waiting to be received)."""
        return self._closed

    def send_nowait(self, item: T) -> None:
        """Send `item` if that needs no waiting.

        Raises:
            QueueFull: the buffer is full (at capacity 0: no receiver is waiting).
            ClosedError: the channel is closed.
        """
        if self._closed:
            raise ClosedError("send on a closed channel")
        if not self._has_blocked_sender():
            if len(self._buffer) < self._capacity:
                self._buffer.append(item)
                self._wake_receiver()
                return
            if self._capacity == 0 and self._idle_receivers():
                self._senders.append((item, None))
                self._wake_receiver()
                return
        raise QueueFull(f"channel is full ({self._capacity} items buffered)")

    async def send(self, item: T) -> None:
        """Send `item`, waiting while the channel is full.

        Raises:
            ClosedError: the channel is (or becomes, while waiting) closed.
        """
        try:
            self.send_nowait(item)
            return
        except QueueFull:
            pass
        waiter = asyncio.get_running_loop().create_future()
        self._senders.append((item, waiter))
        self._wake_receiver()  # at capacity 0 a waiting receiver takes it straight from us
        await waiter  # cancelling this leaves a cancelled waiter that receivers skip

    def receive_nowait(self) -> T:
        """Take the next item if one is ready.

        Raises:
            asyncio.QueueEmpty: nothing is ready yet.
            ClosedError: the channel is closed and drained.
        """
        item = self._take()
        if item is not _Empty.EMPTY:
            return item
        if self._closed:
            raise ClosedError("channel is closed and drained")
        raise asyncio.QueueEmpty("no item ready in channel")

    async def receive(self) -> T:
        """Take the next item, waiting for one.

        Raises:
            ClosedError: the channel is closed and drained.
        """
        while True:
            item = self._take()
            if item is not _Empty.EMPTY:
                return item
            if self._closed:
                raise ClosedError("channel is closed and drained")
            waiter = asyncio.get_running_loop().create_future()
            self._receivers.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_receiver()  # we were woken for an item: pass the wake-up on
                elif waiter in self._receivers:  # close() may have cleared it already
                    self._receivers.remove(waiter)
                raise

    def close(self) -> None:
        """Refuse further sends; receivers drain what is buffered, then stop."""
        if self._closed:
            return
        self._closed = True
        senders, self._senders = self._senders, deque()
        for item, waiter in senders:
            if waiter is None:
                self._buffer.append(item)  # already accepted: handed to a receiver
            elif not waiter.done():
                waiter.set_exception(ClosedError("channel closed before this item was taken"))
        while self._receivers:
            receiver = self._receivers.popleft()
            if not receiver.done():
                receiver.set_result(None)

    def statistics(self) -> ChannelStats:
        """Return a snapshot of the channel's state."""
        return ChannelStats(
            size=len(self._buffer),
            capacity=self._capacity,
            waiting_senders=sum(1 for _, w in self._senders if w is not None and not w.done()),
            waiting_receivers=self._idle_receivers(),
            closed=self._closed,
        )

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                item = await self.receive()
            except ClosedError:
                return
            yield item

    def _take(self) -> T | _Empty:
        buffer, senders = self._buffer, self._senders
        if buffer:
            item = buffer.popleft()
            # Room freed: the oldest blocked sender's item moves into the buffer.
            while senders:
                pending, waiter = senders.popleft()
                if waiter is not None and waiter.done():
                    continue  # that sender was cancelled
                buffer.append(pending)
                if waiter is not None:
                    waiter.set_result(None)
                break
            return item
        while senders:
            pending, waiter = senders.popleft()
            if waiter is None:
                return pending
            if not waiter.done():
                waiter.set_result(None)
                return pending
        return _Empty.EMPTY

    def _has_blocked_sender(self) -> bool:
        senders = self._senders
        while senders and senders[0][1] is not None and senders[0][1].done():
            senders.popleft()  # drop cancelled senders at the head
        return bool(senders)

    def _idle_receivers(self) -> int:
        return sum(1 for r in self._receivers if not r.done())

    def _wake_receiver(self) -> None:
        receivers = self._receivers
        while receivers:
            receiver = receivers.popleft()
            if not receiver.done():
                receiver.set_result(None)
                return
