"""Conveyor: durable background jobs for Python.

    import conveyor

    app = conveyor.App("sqlite:///jobs.db")

    @app.task(retry=conveyor.RetryPolicy(max_attempts=5))
    async def send_email(to: str, subject: str) -> str: ...

    job = await send_email.enqueue("a@b.c", "hi")
    print(await job.result(timeout=10))

The package root is the table of contents: the entry object, the task and job types, the
rules, the signals task code raises, the error root and the errors callers catch. Everything
else lives in its module.
"""

from conveyor.app import App
from conveyor.clock import Clock, FakeClock, SystemClock
from conveyor.errors import (
    Cancel,
    ConveyorError,
    Fail,
    JobCancelled,
    JobFailed,
    LockLost,
    LockNotAcquired,
    NonRetryable,
    Retry,
)
from conveyor.flow import Circuit, RateLimit
from conveyor.handle import JobHandle
from conveyor.job import Job, JobState
from conveyor.producer import JobOptions
from conveyor.retry import RetryPolicy
from conveyor.task import Batch, BatchTask, Signature, Task
from conveyor.worker import WorkerConfig
from conveyor.worker.context import JobContext, JobInfo, current_job, current_jobs
from conveyor.workflow import BatchStatus, GroupHandle, JobBatch, chain, chord, group

__all__ = [
    "App",
    "Batch",
    "BatchStatus",
    "BatchTask",
    "Cancel",
    "Circuit",
    "Clock",
    "ConveyorError",
    "Fail",
    "FakeClock",
    "GroupHandle",
    "Job",
    "JobBatch",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobOptions",
    "JobState",
    "LockLost",
    "LockNotAcquired",
    "NonRetryable",
    "RateLimit",
    "Retry",
    "RetryPolicy",
    "Signature",
    "SystemClock",
    "Task",
    "WorkerConfig",
    "chain",
    "chord",
    "current_job",
    "current_jobs",
    "group",
]

__version__ = "0.1.0"
