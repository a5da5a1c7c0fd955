"""The worker: fetch, execute, heartbeat and settle (layer 5)."""

from conveyor.worker.config import QueueSelector, WorkerConfig, parse_queues
from conveyor.worker.stats import WorkerStats
from conveyor.worker.worker import Worker

__all__ = ["QueueSelector", "Worker", "WorkerConfig", "WorkerStats", "parse_queues"]
