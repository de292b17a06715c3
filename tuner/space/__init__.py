"""The search space: typed hyperparameters and the spec's ``[search.NAME]`` tables.

Owns ``Param`` and ``Space`` (sampling a point with Optuna's ``suggest_*``,
formatting it; :mod:`.params`) and the parsing of ``[search.NAME]`` tables and
warm-start points (:mod:`.tables`). It may import :mod:`tuner.common` and
:mod:`tuner.errors`; no TensorFlow.
"""
