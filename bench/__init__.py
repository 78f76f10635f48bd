"""Benchmarks of the service and its engine on this machine (see bench/README.md)."""
