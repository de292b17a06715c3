"""Helpers of ``benchmarks/scale.py``: filling a study fast, and timing a worker's storage."""
