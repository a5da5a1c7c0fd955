"""Retry rules: how many attempts, how long between them, which errors retry at all."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.errors import ConfigError, Fail, NonRetryable

__all__ = ["RetryPolicy"]

log = logging.getLogger("conveyor.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a failed attempt is tried again.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(max_delay, base_delay * factor ** (n - 1))``, then spread by ``±jitter`` (a
    fraction) so that jobs failing together don't retry together. A `delay` function
    replaces that formula: its value (seconds) is capped by `max_delay`, not jittered.

    Args:
        max_attempts: total attempts, the first included (1 = never retry).
        base_delay: seconds before the second attempt.
        factor: growth of the delay per attempt.
        max_delay: cap on any single delay, in seconds.
        jitter: fraction of the delay to randomise, in [0, 1].
        retry_on: exception types that may retry; others fail the job at once.
        dont_retry: exception types that never retry (checked first). `NonRetryable`
            subclasses and `conveyor.Fail` never retry either.
        delay: ``delay(attempt, error) -> seconds``, called with the failed attempt's number
            (1 for the first) and its exception. If it raises or returns something other
            than a finite number >= 0, the error is logged and the formula is used for that
            retry (the job keeps its retries).

    Example:
        RetryPolicy(max_attempts=5, base_delay=2, dont_retry=(ValueError,))
        RetryPolicy(max_attempts=8, delay=lambda attempt, exc: 2**attempt)
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry: tuple[type[BaseException], ...] = field(default=())
    delay: Callable[[int, BaseException], float] | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and not callable(self.delay):
            raise ConfigError(
                "RetryPolicy.delay must be a function (attempt, error) -> seconds, "
                f"got {type(self.delay).__name__} {self.delay!r}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("RetryPolicy delays must be >= 0")
        if self.factor < 1:
            raise ConfigError(f"RetryPolicy.factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter}")

    def backoff(
        self, attempts: int, exc: BaseException | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after `attempts` failed attempts (attempts >= 1), the last one
        failed by `exc`: the `delay` function's answer if there is one (and `exc`), else
        the exponential formula."""
        fn = self.delay
        if fn is not None and exc is not None:
            try:
                value = fn(attempts, exc)
            except Exception as err:
                log.error(
                    "RetryPolicy.delay %s raised %r for attempt %d; using the exponential "
                    "backoff", _name(fn), err, attempts,
                )  # fmt: skip
            else:
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and value >= 0
                ):
                    return min(self.max_delay, float(value))
                log.error(
                    "RetryPolicy.delay %s returned %r for attempt %d, not a number of "
                    "seconds >= 0; using the exponential backoff", _name(fn), value, attempts,
                )  # fmt: skip
        n = max(1, attempts)
        # Cap the exponent so huge attempt counts cannot overflow a float.
        raw = min(self.max_delay, self.base_delay * self.factor ** min(n - 1, 64))
        if self.jitter and raw:
            spread = raw * self.jitter
            raw += (rng or random).uniform(-spread, spread)
        return max(0.0, min(self.max_delay, raw))

    def retryable(self, exc: BaseException) -> bool:
        """Whether this kind of error may be retried at all (attempts aside)."""
        if isinstance(exc, (Fail, NonRetryable, *self.dont_retry)):
            return False
        return isinstance(exc, self.retry_on)

    def should_retry(self, exc: BaseException, attempts: int) -> bool:
        """Whether a job that failed with `exc` on attempt `attempts` gets another attempt."""
        return attempts < self.max_attempts and self.retryable(exc)


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
