"""Synthetic datasets in published layouts, for tests, demos, benchmarks and tutorials."""
