"""Conveyor benchmarks (scripts that print tables; not part of the test suite)."""
