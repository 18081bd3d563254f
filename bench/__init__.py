"""Benchmarks for serving, batch scoring and training (run them with ``make bench``)."""
