"""Running workers: start-up, the trial loop, the fate of a trial, pools and signals.

Owns turning a spec into the objects below it (storage, study, data,
objective), the worker loop (:mod:`.worker`) with the one place that decides
what an error means for a trial and the worker (:mod:`.fate`), the start-up
checks (:mod:`.startup`), local multi-process pools (:mod:`.pool`),
SIGINT/SIGTERM handling (:mod:`.signals`) and the offline advice
(:mod:`.offline`). It may import every package below it; TensorFlow only
through :mod:`tuner.training`, lazily.
"""
