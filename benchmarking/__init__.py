"""Benchmarks and load tests: the load generator, in-process and served measurements, tables and charts."""
