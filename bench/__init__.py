"""Benchmarks for issue 5: ``make bench`` (or ``python -m bench``) writes BENCHMARKS.md."""
