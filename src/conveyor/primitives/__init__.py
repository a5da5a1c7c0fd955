"""In-process concurrency primitives: channels, batchers, loaders, pipelines and limiters."""

from conveyor.primitives.batcher import Batcher, BatcherStats, Handler, Overflow

__all__ = ["Batcher", "BatcherStats", "Handler", "Overflow"]
