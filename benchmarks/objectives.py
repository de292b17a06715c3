"""Two objectives or one with a gap limit: which finds the better model for the same epochs?

The course judged a learning rate by two criteria: the best validation accuracy,
and the smallest train-validation gap. tuner offers two forms of that:

- ``pareto``: ``objective.metrics = ["val_accuracy", "gap"]``, a study of two
  objectives. Optuna prunes none of its trials; the export names the front's
  trial with the best validation accuracy.
- ``constrained``: ``objective.max_gap``, one objective (validation accuracy)
  with the gap as a constraint: the sampler prefers trials within it, pruning
  stays on, the export names the best trial within it.

Both run through tuner's own study machinery (the spec's sampler, pruner, warm
start, worker loop and the export's choice, :mod:`tuner.study.choice`) on the
learning curves recorded for clothing-scratch (``benchmarks/searchbench/scratch.json``:
31 learning rates, 10 epochs each, training and validation accuracy), for many
sampler seeds, until a budget of epochs is spent. ``single`` (validation
accuracy alone) is the reference. For each form the table gives, over seeds,
the median validation accuracy and gap of the chosen trial and how often its
gap is within the limit.

Usage::

    python3 benchmarks/objectives.py --seeds 20 --budget 40 --max-gap 0.05
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from optuna.storages import InMemoryStorage
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from searchbench.curves import load_curves
from tuner.common import attrs
from tuner.common.console import err_console
from tuner.config.spec import load_spec
from tuner.runner.worker import run_objective
from tuner.space.params import suggest
from tuner.study.choice import choose
from tuner.training.callbacks import PruningBeforeLastEpoch

HERE = Path(__file__).resolve().parent / "searchbench"
FORMS = {
    "single": [],
    "pareto": ['objective.metrics=["val_accuracy", "gap"]'],
    "constrained": ["objective.max_gap={max_gap}"],
}


def run(form: str, seed: int, budget: int, max_gap: float) -> dict[str, Any]:
    """One search of ``form`` until ``budget`` epochs; the export's chosen trial."""
    curves = load_curves(HERE / "scratch.json")
    epochs = curves.epochs
    sets = [s.format(max_gap=max_gap) for s in FORMS[form]]
    spec = load_spec(
        "clothing-scratch",
        [*sets, f"sampler.seed={seed}", f"search.n_trials={budget}", f"train.epochs={epochs}"],
    )
    multi = spec.objective.multi
    spent = 0

    def objective_for(check: Callable[[], None]) -> Callable[[optuna.Trial], Any]:
        def objective(trial: optuna.Trial) -> Any:
            nonlocal spent
            point = suggest(trial, spec.search.space)
            run = curves.nearest(point, spec.search.space)
            val, train = run["val_accuracy"], run["train_accuracy"]
            pruning = None if multi else PruningBeforeLastEpoch(trial, "val_accuracy", epochs)
            gap = 0.0
            try:
                for epoch in range(epochs):
                    check()
                    spent += 1
                    gap = train[epoch] - val[epoch]
                    trial.set_user_attr(attrs.METRIC_GAP, gap)
                    trial.set_user_attr(attrs.GAP, gap)
                    if pruning is not None:
                        pruning.on_epoch_end(epoch, {"val_accuracy": val[epoch]})
            finally:  # as tuner's objective does it, at the trial's end, pruned or not
                if form == "constrained":
                    trial.set_constraint("gap", gap - max_gap)
            return [val[-1], train[-1] - val[-1]] if multi else val[-1]

        return objective

    storage = InMemoryStorage()
    quiet, err_console.quiet = err_console.quiet, True
    try:
        with contextlib.redirect_stdout(None):
            run_objective(spec, storage, "memory", objective_for, until=lambda: spent >= budget)
    finally:
        err_console.quiet = quiet
    study = optuna.load_study(study_name=spec.study.name, storage=storage)
    choice = choose(study, max_gap if form == "constrained" else 0.0)
    assert choice is not None
    best = choice.best
    trials = study.get_trials(deepcopy=False)
    return {
        "val_accuracy": best.values[0],
        "gap": best.user_attrs[attrs.METRIC_GAP],
        "learning_rate": best.params["learning_rate"],
        "trials": len(trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
    }


def main(
    seeds: Annotated[int, typer.Option(help="sampler seeds 0 .. N-1")] = 20,
    budget: Annotated[int, typer.Option(help="epochs to spend (the course's: 4 x 10)")] = 40,
    max_gap: Annotated[
        float, typer.Option(help="the constrained form's objective.max_gap")
    ] = 0.05,
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = Table(
        title=f"clothing-scratch, {budget} epochs, {seeds} seeds, max_gap {max_gap:g}: "
        "the chosen trial (median over seeds)"
    )
    for col in ("form", "val_accuracy", "gap", f"gap <= {max_gap:g}", "trials", "pruned"):
        table.add_column(col, justify="right")
    for form in FORMS:
        rows = [run(form, seed, budget, max_gap) for seed in range(seeds)]
        within = sum(r["gap"] <= max_gap for r in rows)
        table.add_row(
            form,
            f"{statistics.median(r['val_accuracy'] for r in rows):.4f}",
            f"{statistics.median(r['gap'] for r in rows):.4f}",
            f"{within}/{seeds}",
            f"{statistics.median(r['trials'] for r in rows):g}",
            f"{statistics.median(r['pruned'] for r in rows):g}",
        )
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
