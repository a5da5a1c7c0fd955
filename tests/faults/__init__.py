"""Fault-injection tests: real worker processes, real signals, a real SQLite file."""
