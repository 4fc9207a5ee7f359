"""Shared benchmark harness: `effgen bench` and benchmarks/bench_*.py both use it."""

from .harness import BenchContext, BenchResult, Rotation, memory_bandwidth_gbps, time_interleaved, with_env

__all__ = ["BenchContext", "BenchResult", "Rotation", "memory_bandwidth_gbps", "time_interleaved", "with_env"]
