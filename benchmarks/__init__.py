"""Benchmarks of the engine and the gateway: ``python -m benchmarks [--quick]`` (RESULTS.md)."""
