"""Benchmarks and experiments (``python -m bench.run`` writes docs/benchmarks.md)."""
