"""Shared benchmark harness: `effgen bench` and benchmarks/bench_*.py both use it."""

from .harness import BenchContext, BenchResult, copy_bandwidth_gbps, time_interleaved

__all__ = ["BenchContext", "BenchResult", "copy_bandwidth_gbps", "time_interleaved"]
