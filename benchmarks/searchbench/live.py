"""Live confirmation: real ``tuner worker`` runs on clothing-scratch, next to the replay.

Each run is one worker on a fresh SQLite file, trained for real on the full
dataset. Its trajectory (epochs spent and best value after each trial, in trial
order, as one worker runs them) is measured exactly as the replay's is, so the
two can be compared seed by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from searchbench.record import run_tuner_worker
from searchbench.replay import Trajectory
from tuner.config.spec import load_spec

__all__ = ["live_run", "trajectory_of"]


def live_run(
    study: str, sets: list[str], n_trials: int, workdir: Path, tag: str
) -> tuple[Trajectory, dict[str, Any]]:
    """One real worker run of ``n_trials`` trials; its trajectory and what it ran."""
    db = workdir / f"{tag}.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    sets = [*sets, f"search.n_trials={n_trials}", f"study.name=search-live-{tag}"]
    command = run_tuner_worker(study, sets, url, workdir / f"{tag}.log")
    name = load_spec(study, sets).study.name
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    path = trajectory_of(trials)
    record = {
        "command": command,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "val_accuracy": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            }
            for t in trials
        ],
    }
    return path, record


def trajectory_of(trials: list[optuna.trial.FrozenTrial]) -> Trajectory:
    """Epochs spent and best value after each finished trial, in trial order."""
    path = Trajectory()
    spent, best = 0, 0.0
    for t in sorted(trials, key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        spent += len(t.intermediate_values)
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = max(best, t.value)
        path.spent.append(spent)
        path.best.append(best)
        path.points.append(dict(t.params))
    return path
