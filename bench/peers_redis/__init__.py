"""Peer adapters for bench/bench_peers.py: one module per system, same interface (base.Adapter)."""
