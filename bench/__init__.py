"""Benchmark harness: python -m bench (see BENCHMARKS.md)."""
