"""In-process concurrency primitives: channels, batchers, loaders, pipelines and limiters."""

from conveyor.primitives.batcher import Batcher, BatcherStats, Handler, Overflow
from conveyor.primitives.cache import Cache, MemoryCache, RedisCache
from conveyor.primitives.channel import Channel, ChannelStats
from conveyor.primitives.loader import Loader, LoaderStats
from conveyor.primitives.limiter import CapacityLimiter, CapacityStats, Counters, RateLimiter
from conveyor.primitives.priority import PriorityBatcher

__all__ = ["Cache", "MemoryCache", "RedisCache", "Loader", "LoaderStats", 
    "Channel",
    "ChannelStats",
    "Batcher",
    "BatcherStats",
    "Handler",
    "Overflow",
    "PriorityBatcher",
    "CapacityLimiter",
    "CapacityStats",
    "Counters",
    "RateLimiter",
]
