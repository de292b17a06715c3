"""Recorded curves: every configuration of a fine grid trained once, by tuner itself.

A recording is a ``tuner worker`` run with ``sampler.kind = grid`` whose
warm-start points are the grid, with pruning off, so each configuration trains
all its epochs with the same code, data and per-trial seed as a real study's
trial (seed = ``model.seed`` + trial number). The study is then read back and
its curves kept in a small JSON file beside this module, with the command that
made them.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.config.spec import load_spec

__all__ = ["grid_sets", "log_grid", "read_curves", "record_study", "run_tuner_worker"]


def log_grid(low: float, high: float, per_decade: int) -> list[float]:
    """Points evenly spaced in log scale from ``low`` to ``high``, ``per_decade`` per decade."""
    steps = round(math.log10(high / low) * per_decade)
    return [float(f"{low * 10 ** (k / per_decade):.6g}") for k in range(steps + 1)]


def record_study(
    study: str,
    points: list[dict[str, Any]],
    sets: list[str],
    workdir: Path,
    tag: str,
) -> tuple[list[dict[str, Any]], str]:
    """Train every point once with ``tuner worker``; return the curves and the command.

    Args:
        study: the spec (a name under ``studies/`` or a path).
        points: the grid, each a full point of the spec's space.
        sets: further ``--set`` overrides (data folder, epochs, seed).
        workdir: where the study's SQLite file and log go.
        tag: names the file and the study.
    """
    name = f"search-record-{tag}"
    url = f"sqlite:///{workdir / f'{tag}.db'}"
    sets = [*sets, *grid_sets(name, points)]
    print(f"recording {len(points)} configurations of {study} ({tag})", flush=True)
    command = run_tuner_worker(study, sets, url, workdir / f"{tag}.log")
    seed = load_spec(study, sets).model.seed
    return read_curves(optuna.load_study(study_name=name, storage=url), seed), command


def run_tuner_worker(study: str, sets: list[str], url: str, log: Path) -> str:
    """One ``tuner worker`` process, as a user starts it (sampler seed exactly
    ``sampler.seed``: ``TUNER_WORKER_INDEX=0``); its output goes to ``log``.

    Returns:
        The command line, for the record.
    """
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", study, "--storage", url]
    cmd += [f"--set={s}" for s in sets]
    env = {**os.environ, "TUNER_WORKER_INDEX": "0"}
    start = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"error: {shlex.join(cmd)} exited with {code}; see {log}")
    print(f"{log.stem}: done in {time.perf_counter() - start:.0f} s; log: {log}", flush=True)
    return shlex.join(cmd)


def read_curves(study: optuna.Study, model_seed: int) -> list[dict[str, Any]]:
    """Each complete trial's point, seed and per-epoch curves, in trial order."""
    curves = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        curves.append(
            {
                "params": t.params,
                "seed": model_seed + t.number,
                "val_accuracy": [
                    round(t.intermediate_values[k], 6) for k in sorted(t.intermediate_values)
                ],
                "train_accuracy": [round(v, 6) for v in t.user_attrs.get("train_accuracy", [])],
            }
        )
    return curves


def grid_sets(name: str, points: list[dict[str, Any]]) -> list[str]:
    """The overrides that make a study train each of ``points`` once, in full, and stop."""
    warm = ", ".join(
        "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in point.items()) + "}"
        for point in points
    )
    return [
        f"study.name={name}",
        "sampler.kind=grid",
        "pruner.kind=none",
        f"search.n_trials={len(points)}",
        f"search.warm_start=[{warm}]",
    ]
