"""Retry rules: how many attempts, how long between them, which errors retry at all."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from conveyor.errors import ConfigError, Fail, NonRetryable

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how a failed attempt is tried again.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(max_delay, base_delay * factor ** (n - 1))``, then spread by ``±jitter`` (a
    fraction) so that jobs failing together don't retry together.

    Args:
        max_attempts: total attempts, the first included (1 = never retry).
        base_delay: seconds before the second attempt.
        factor: growth of the delay per attempt.
        max_delay: cap on any single delay, in seconds.
        jitter: fraction of the delay to randomise, in [0, 1].
        retry_on: exception types that may retry; others fail the job at once.
        dont_retry: exception types that never retry (checked first). `NonRetryable`
            subclasses and `conveyor.Fail` never retry either.

    Example:
        RetryPolicy(max_attempts=5, base_delay=2, dont_retry=(ValueError,))
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("RetryPolicy delays must be >= 0")
        if self.factor < 1:
            raise ConfigError(f"RetryPolicy.factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `attempts` failed attempts (attempts >= 1)."""
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
