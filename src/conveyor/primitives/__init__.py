"""In-process concurrency primitives: channels, batchers, loaders, pipelines and limiters.

Layer 1 of Conveyor: no backend, no I/O of their own (`RedisCache` aside, behind its extra).
The worker and producer are built from them; applications may use them directly.

* `Channel` — bounded, closeable queue between tasks.
* `Batcher` / `PriorityBatcher` — coalesce single submissions into batched handler calls.
* `Loader` — DataLoader-style keyed loading with single flight and a `Cache` tier
  (`MemoryCache`, `RedisCache`).
* `Pipeline` — map / flat_map / batch / limit stages joined by channels.
* `RateLimiter` (token bucket, or shared through `Counters`) and `CapacityLimiter`.
* `CircuitBreaker` — fail fast while a dependency keeps failing (`Circuit`, `CircuitOpen`).
"""

from conveyor.primitives.batcher import Batcher, BatcherStats, Handler, Overflow
from conveyor.primitives.cache import Cache, MemoryCache, RedisCache
from conveyor.primitives.channel import Channel, ChannelStats
from conveyor.primitives.circuit import Circuit, CircuitBreaker, CircuitOpen, CircuitStats
from conveyor.primitives.limiter import CapacityLimiter, CapacityStats, Counters, RateLimiter
from conveyor.primitives.loader import Loader, LoaderStats
from conveyor.primitives.pipeline import Pipeline
from conveyor.primitives.priority import PriorityBatcher

__all__ = [
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
