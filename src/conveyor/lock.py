"""`Lock`: a named lock across processes and hosts, on the store's `Locks`, renewed while held.

A `Lock` takes its name in the store (waiting up to `wait` seconds, woken by the store when
the holder releases or its ttl passes, not by polling), renews it every ``ttl / 3`` from a
task of its own `TaskGroup`, and releases it on exit. Each holding has a fencing `token`,
larger than every earlier one of that name: a resource that remembers the largest token it
has seen can refuse a holder whose lock was lost meanwhile.

If a renewal finds the lock gone (it expired while this process was stopped or cut off, and
maybe someone else holds it now), `lost` is set and, with ``on_lost="cancel"`` (the
default), the body of ``async with`` is cancelled and `LockLost` raised in its place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import secrets
import socket
from types import TracebackType
from typing import Literal, Self

from conveyor.capabilities import Locks
from conveyor.clock import Clock
from conveyor.errors import ConfigError, LockLost, LockNotAcquired, StateError
from conveyor.names import check_lock_name
from conveyor.portal import Portal

__all__ = ["Lock", "OnLost"]

log = logging.getLogger("conveyor.lock")

OnLost = Literal["cancel", "ignore"]

# A renewal that fails (the store unreachable) is retried this often until the holding
# would have lapsed; then the lock counts as lost.
_RETRY = 0.05


class Lock:
    """One named lock; see `App.lock`, which builds it.

    Args:
        store: a store with the `Locks` capability.
        clock: the app's clock (renewals sleep on it).
        portal: the app's sync portal (for ``with`` and the `*_sync` methods).
        name: the lock's name (1-200 characters from ``A-Z a-z 0-9 _ . : @ / + = # -``).
        ttl: seconds the store holds the lock without a renewal (> 0).
        wait: seconds to wait for a held lock before `LockNotAcquired` (0: try once).
        on_lost: ``"cancel"`` cancels the body when the lock is lost; ``"ignore"`` only sets
            `lost`.
        owner: the text stored as its holder (default ``host:pid:<random>``, unique per Lock).

    Example:
        async with app.lock("report:generate", ttl=60, wait=5) as lock:
            await write_report(fence=lock.token)
    """

    def __init__(
        self,
        store: Locks,
        clock: Clock,
        portal: Portal,
        name: str,
        ttl: float,
        wait: float = 0.0,
        *,
        on_lost: OnLost = "cancel",
        owner: str | None = None,
    ) -> None:
        check_lock_name(name)
        if not _number(ttl) or not ttl > 0 or not math.isfinite(ttl):
            raise ConfigError(f"lock ttl must be a finite number of seconds > 0, got {ttl!r}")
        if not _number(wait) or not wait >= 0 or not math.isfinite(wait):
            raise ConfigError(f"lock wait must be a finite number of seconds >= 0, got {wait!r}")
        if on_lost not in ("cancel", "ignore"):
            raise ConfigError(f'on_lost must be "cancel" or "ignore", got {on_lost!r}')
        self.name = name
        self.ttl = float(ttl)
        self.wait = float(wait)
        self.on_lost: OnLost = on_lost
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: The fencing token of the current (or last) holding; `None` before the first.
        self.token: int | None = None
        #: Set when a renewal or the release found the holding gone.
        self.lost = False
        self._store = store
        self._clock = clock
        self._portal = portal
        self._held = False
        self._tg: asyncio.TaskGroup | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._body: asyncio.Task[object] | None = None
        self._cancel_body = True
        self._cancelled = False  # we cancelled the body (on_lost="cancel")
        self._holder: concurrent.futures.Future[bool] | None = None
        self._release_now: asyncio.Event | None = None
        self._holder_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost else "held" if self._held else "free"
        return f"<Lock {self.name!r} {state} token={self.token}>"

    @property
    def held(self) -> bool:
        """Whether this Lock holds its name now (acquired, not released, not known lost)."""
        return self._held and not self.lost

    # -- async -----------------------------------------------------------------------------

    async def acquire(self) -> int:
        """Take the lock, waiting up to `wait` seconds; its fencing token.

        Release it from the same task (`release`, or use ``async with``). With
        ``on_lost="cancel"`` a lost lock cancels that task.

        Raises:
            LockNotAcquired: someone else held it for longer than `wait`.
            StateError: this Lock is held already.
        """
        if self._held or self._tg is not None:
            raise StateError(f"lock {self.name!r} is held by this Lock already; release it first")
        started = self._clock.monotonic()
        token = await self._take()
        self.token, self.lost, self._held, self._cancelled = token, False, True, False
        self._body = asyncio.current_task()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._renewer = tg.create_task(self._renew(token, started + self.ttl))
        return token

    async def release(self) -> bool:
        """Stop renewing and free the lock: `True`, or `False` if it had been lost meanwhile
        (expired or taken over: the store refused the release; `lost` is set).

        Raises:
            StateError: this Lock does not hold its name (never acquired or released already).
        """
        if not self._held:
            raise StateError(
                f"lock {self.name!r} is not held by this Lock: acquire it before releasing"
            )
        await self._stop_renewal()
        self._held = False
        assert self.token is not None
        freed = await self._store.release_lock(self.name, self.token)
        if not freed:
            self.lost = True
        return freed

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        freed = await self.release()
        if self.on_lost == "ignore":
            return
        if self._cancelled:
            self._cancelled = False
            assert self._body is not None
            if self._body.uncancel() == 0 and (exc is None or exc_type is asyncio.CancelledError):
                raise LockLost(self._lost_message("the body was cancelled")) from None
        elif not freed and exc is None:
            raise LockLost(self._lost_message("found at its release"))

    # -- sync (scripts) --------------------------------------------------------------------

    def acquire_sync(self) -> int:
        """`acquire` for synchronous code: renewals run on the app's portal thread while the
        lock is held. A lost lock cannot cancel synchronous code: `lost` is set, and
        `release_sync` (or leaving ``with``) tells."""
        if self._holder is not None or self._held:
            raise StateError(f"lock {self.name!r} is held by this Lock already; release it first")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigError(
                f"lock {self.name!r}: acquire_sync / `with` was used inside a running event "
                "loop; use `async with app.lock(...)` there"
            )
        taken: concurrent.futures.Future[int] = concurrent.futures.Future()
        holder = self._portal.submit(self._hold(taken))
        try:
            token = taken.result()
        except BaseException:
            holder.exception()  # it ended with the same error: collect it
            raise
        self._holder = holder
        return token

    def release_sync(self) -> bool:
        """`release` for synchronous code: `True`, or `False` if the lock had been lost."""
        holder, loop, event = self._holder, self._holder_loop, self._release_now
        if holder is None or loop is None or event is None:
            raise StateError(
                f"lock {self.name!r} is not held by this Lock: acquire it before releasing"
            )
        self._holder = None
        loop.call_soon_threadsafe(event.set)
        return holder.result()

    def __enter__(self) -> Self:
        self.acquire_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        freed = self.release_sync()
        if (self.lost or not freed) and self.on_lost == "cancel" and exc is None:
            raise LockLost(self._lost_message("found while the block ran"))

    async def _hold(self, taken: concurrent.futures.Future[int]) -> bool:
        """The portal-side task of a sync holding: acquire, wait for `release_sync`, release."""
        self._cancel_body = False  # the body is the caller's thread: nothing to cancel here
        self._release_now = asyncio.Event()
        self._holder_loop = asyncio.get_running_loop()
        try:
            try:
                token = await self.acquire()
            except BaseException as exc:
                taken.set_exception(exc)
                raise
            taken.set_result(token)
            await self._release_now.wait()
            return await self.release()
        finally:
            self._cancel_body = True

    # -- inside ----------------------------------------------------------------------------

    async def _take(self) -> int:
        """Acquire, waiting on the store's wake-ups (a release, the holder's expiry) for at
        most `wait` seconds of the event loop's timer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            token = await self._store.acquire_lock(self.name, self.owner, self.ttl)
            if token is not None:
                return token
            left = deadline - loop.time()
            if left <= 0:
                raise LockNotAcquired(
                    f"lock {self.name!r} is held by another owner and was not released within "
                    f"{self.wait:g} s; pass a longer wait= or try again later "
                    "(`conveyor inspect locks` shows the holder)"
                )
            await self._store.wait_lock(self.name, left)

    async def _renew(self, token: int, lapses: float) -> None:
        """Extend every ttl/3 until cancelled; mark the lock lost when the store refuses, or
        when it stayed unreachable until the holding would have lapsed (`lapses`)."""
        every = self.ttl / 3
        pause = every
        while True:
            await self._clock.sleep(pause)
            started = self._clock.monotonic()
            try:
                ok = await self._store.extend_lock(self.name, token, self.ttl)
            except Exception as exc:
                if self._clock.monotonic() >= lapses:
                    log.warning("lock %r: renewals failed until its ttl passed: %s", self.name, exc)
                    self._lose()
                    return
                log.warning("lock %r: renewal failed, retrying: %s", self.name, exc)
                pause = min(_RETRY, max(0.0, lapses - self._clock.monotonic()))
                continue
            if not ok:
                log.warning(
                    "lock %r (token %d) was lost: the store refused its renewal", self.name, token
                )
                self._lose()
                return
            lapses, pause = started + self.ttl, every

    def _lose(self) -> None:
        self.lost = True
        body = self._body
        if (
            self.on_lost == "cancel"
            and self._cancel_body
            and body is not None
            and not body.done()
            and not self._cancelled
        ):
            self._cancelled = True
            body.cancel(f"lock {self.name!r} was lost")

    async def _stop_renewal(self) -> None:
        tg, renewer = self._tg, self._renewer
        self._tg = self._renewer = None
        if renewer is not None:
            renewer.cancel()
        if tg is not None:
            await tg.__aexit__(None, None, None)

    def _lost_message(self, when: str) -> str:
        return (
            f"lock {self.name!r} (token {self.token}) was lost ({when}): it expired or passed to "
            f"another holder (ttl {self.ttl:g} s); a longer ttl survives longer pauses"
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
