"""What a study yields: status, the export JSON, plots, the best model, the dashboard.

Owns ``tuner status`` (:mod:`.status`), ``best_result`` and the export writers
(:mod:`.export`), the plots (:mod:`.plots`), exporting the best model
(:mod:`.model_export`, which imports :mod:`tuner.training` lazily) and serving
optuna-dashboard (:mod:`.dashboard`). It sits beside :mod:`tuner.runner` and may
import every package below it.
"""
