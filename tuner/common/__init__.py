"""Foundations every layer may use: the trial-record names, console output, paths.

Owns the attribute names of the trial-record contract (:mod:`.attrs`), the
worker's console lines and progress bars (:mod:`.console`), path helpers
(:mod:`.paths`) and loading TensorFlow quietly (:mod:`.tfload`, which imports
no TensorFlow itself). It imports nothing of tuner but :mod:`tuner.errors`.
"""
