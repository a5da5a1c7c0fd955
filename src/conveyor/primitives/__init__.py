"""In-process concurrency primitives: channels, batchers, loaders, pipelines and limiters."""

from conveyor.primitives.batcher import Batcher, BatcherStats, Handler, Overflow
from conveyor.primitives.priority import PriorityBatcher

__all__ = ["Batcher", "BatcherStats", "Handler", "Overflow", "PriorityBatcher"]
