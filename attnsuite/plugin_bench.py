"""Benchmark options and fixtures (issue: measurement). Placeholder until that lands."""
