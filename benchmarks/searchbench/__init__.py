"""The search benchmark's parts: recorded learning curves, their replay, and the report.

``benchmarks/search.py`` is the command line; see its docstring.
"""
