"""Benchmarks, run by hand from the repository root as modules (`python -m benchmarks.bench_dicom_export`).

A package so that the scripts share the export benchmark's corpus (``corpus``) and baselines
(``baselines``) by plain imports. Nothing here imports medbeam: the naive baseline's process must not.
"""
