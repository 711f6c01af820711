"""Performance benchmarks for imagegen; run ``python benchmarks/run.py`` (see README.md)."""
