"""Benchmarks (`make bench`): each figure measured in one run against its reference, as a ratio."""
