"""Locks the public namespace of conveyor.primitives: changing it is a deliberate act."""

from __future__ import annotations

import conveyor.primitives as primitives


def test_public_exports_are_exactly_these() -> None:
    assert sorted(primitives.__all__) == [
        "Batcher",
        "BatcherStats",
        "Cache",
        "CapacityLimiter",
        "CapacityStats",
        "Channel",
        "ChannelStats",
        "Circuit",
        "CircuitBreaker",
        "CircuitOpen",
        "CircuitStats",
        "Counters",
        "Handler",
        "Loader",
        "LoaderStats",
        "MemoryCache",
        "Overflow",
        "Pipeline",
        "PriorityBatcher",
        "RateLimiter",
        "RedisCache",
    ]
    for name in set(primitives.__all__) - {"Handler", "Overflow"}:  # those two are aliases
        assert isinstance(getattr(primitives, name), type)
        assert getattr(primitives, name).__doc__, f"{name} has no docstring"
