"""Benchmarks for runner: `python -m bench` (or `make bench`). Results go to docs/benchmarks.md."""
