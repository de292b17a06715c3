"""The Optuna study: creating or joining it, its sampler and pruner, its note and board.

Owns race-free study creation and the warm start (:mod:`.opening`), samplers
and pruners built from their settings (:mod:`.samplers`, :mod:`.pruners`), the
dashboard note (:mod:`.note`) and the worker phase board (:mod:`.phases`). It
may import :mod:`tuner.storages`, :mod:`tuner.recipes`, :mod:`tuner.space`,
:mod:`tuner.common` and :mod:`tuner.errors`; no TensorFlow, no spec.
"""
