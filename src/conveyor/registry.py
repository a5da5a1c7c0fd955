"""The task registry's public home: `Registry` lives beside `Task` in `conveyor.task` (it
holds tasks; keeping both in one module keeps the import graph acyclic)."""

from __future__ import annotations

from conveyor.task import Registry

__all__ = ["Registry"]
