"""Benchmarks and the rule-set scaling sweep."""
