"""Time-driven work: the maintenance loop and periodic jobs (layer 6)."""

from conveyor.scheduler.maintenance import Maintenance, MaintenanceStats
from conveyor.scheduler.periodic import Scheduler, SchedulerStats
from conveyor.scheduler.schedules import Schedule, Schedules

__all__ = [
    "Maintenance",
    "MaintenanceStats",
    "Schedule",
    "Scheduler",
    "SchedulerStats",
    "Schedules",
]
