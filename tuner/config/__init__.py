"""Study specs: TOML files, ``--set`` overrides, defaults, checks, and the join check.

Owns ``StudySpec`` (a frozen dataclass tree whose sections are the settings
that the lower layers take; :mod:`.spec`), finding spec files (:mod:`.files`),
typed values and overrides (:mod:`.values`), the checks that need no
TensorFlow (:mod:`.checks`), and comparing a worker's spec with the one its
study was created with (:mod:`.join`). Only :mod:`tuner.runner`,
:mod:`tuner.results` and :mod:`tuner.cli` import it.
"""
