"""Time-driven work: the maintenance loop (layer 6)."""

from conveyor.scheduler.maintenance import Maintenance, MaintenanceStats

__all__ = ["Maintenance", "MaintenanceStats"]
