"""The SQLite backend package: schema, SQL operations and the async store."""

from conveyor.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
