"""Benchmarks: a load generator in its own process, the bare-aiohttp ceiling, and a
driver (`python -m bench`, `make bench`) that reports every scenario as a ratio to the
ceiling measured in the same run."""
