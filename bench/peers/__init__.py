"""Apps and adapters the benchmarks start in worker processes (Conveyor and peer systems)."""
