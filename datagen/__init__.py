"""Synthetic CFPB complaints in the official CSV export format, so demos, tests and benchmarks
need no downloaded data (see `generator.py` and README.md)."""
