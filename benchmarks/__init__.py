"""Benchmarks of the engine and the gateway: ``python -m benchmarks [--quick]``; the latest figures are in the README."""
