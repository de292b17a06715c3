"""Training a trial: the one package that imports TensorFlow and Keras at module level.

Owns model assembly (:mod:`.model`), the frozen-feature cache
(:mod:`.features`; its files in :mod:`.feature_store`, which loads no TensorFlow, and
its extraction in :mod:`.extraction`), head fitting on cached features (:mod:`.headfit`), the
objective that reports every epoch (:mod:`.objective`, :mod:`.callbacks`), the
learning-curve plot of a trial (:mod:`.trial_curve`) and the recipe probe
(:mod:`.probe`). It may import every package below :mod:`tuner.config` and
receives settings, never the spec. This ``__init__`` imports nothing, so that
importing a light submodule does not load TensorFlow.
"""
