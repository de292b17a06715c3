"""Export: the pure best result of a study, and thin writers for JSON and plots.

The best model's writer is :mod:`tuner.results.model_export`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.common.attrs import GAP, METRIC_NAME, TRAIN_ACCURACY, TRAIN_VALUES, WARM_START
from tuner.common.paths import nearest_existing, probe_writable
from tuner.config.spec import StudySpec, spec_to_dict
from tuner.errors import StudyError, TunerError
from tuner.space.params import format_params
from tuner.storages import counts
from tuner.storages.retries import gave_up
from tuner.study.choice import TIE_AT, TIE_TOLERANCE, Choice, choose, ranked, tied_value

__all__ = ["BestResult", "best_result", "check_output", "write_json", "write_plots"]


@dataclass(frozen=True)
class BestResult:
    """The best trial of a study and the trial counts, as in the export JSON contract."""

    study: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    n_trials: int
    states: dict[str, int]
    gap: float | None
    train_accuracy: float | None
    gave_up: tuple[dict[str, Any], ...] = ()  # trials whose retries ran out
    metrics: tuple[str, ...] = ("val_accuracy",)  # the objectives' names
    directions: tuple[str, ...] = ("maximize",)
    best_values: tuple[float, ...] = ()  # the best trial's values, one per objective
    best_trials: tuple[dict[str, Any], ...] = ()  # the Pareto front (the best, for one)
    feasible: bool | None = None  # the best trial's gap is within objective.max_gap
    max_gap: float = 0.0
    tied: bool = False  # every complete trial scored the same: the best is only the earliest

    def to_json(self, spec: StudySpec | None = None, extra: dict[str, Any] | None = None) -> dict:
        data: dict[str, Any] = {
            "study": self.study,
            "best_trial": self.best_trial,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "n_trials": self.n_trials,
            "states": self.states,
            "gap": self.gap,
            "train_accuracy": self.train_accuracy,
            "gave_up": [dict(r) for r in self.gave_up],
            "metrics": list(self.metrics),
            "directions": list(self.directions),
            "best_values": list(self.best_values),
            "best_trials": [dict(t) for t in self.best_trials],
        }
        if self.max_gap > 0:
            data["max_gap"], data["feasible"] = self.max_gap, self.feasible
        if self.tied:
            data["tied"] = True
        data.update(extra or {})
        if spec is not None:
            data["spec"] = spec_to_dict(spec)
        return data


def best_result(
    study: optuna.Study, max_gap: float = 0.0, storage: BaseStorage | None = None
) -> BestResult:
    """The study's best trial by :mod:`tuner.study.choice`'s rule, its front, counts by state.

    ``max_gap`` is the study's ``objective.max_gap`` (0: none). ``storage`` is the
    study's storage as opened: on an RDB storage, a study of one objective without
    ``max_gap`` is counted and ranked by the database (:mod:`tuner.storages.counts`).

    Raises:
        StudyError: when the study has no complete trial yet.
    """
    found = counts.rdb(storage)
    tied: float | None
    if found is not None and len(study.directions) == 1 and max_gap <= 0:
        states = counts.state_counts(found, study._study_id)
        top = counts.best_trials(found, study._study_id, study.direction, 1)
        choice = Choice(top[0], [top[0]]) if top else None
        tie = counts.tie(found, study._study_id, TIE_AT, TIE_TOLERANCE)
        tied = None if tie is None else tie.value
    else:
        trials = study.get_trials(deepcopy=False)
        states = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        choice = choose(study, max_gap)
        tied = tied_value(trials)
    n_trials = sum(states.values())
    if choice is None:
        raise StudyError(
            f"study {study.study_name!r} has no complete trial yet ({n_trials} trials"
            f"{''.join(f', {n} {s}' for s, n in states.items())}); run "
            f"`tuner worker --study {study.study_name}` and try again"
        )
    best = choice.best
    train = best.user_attrs.get(TRAIN_ACCURACY) or [None]
    values = tuple(float(v) for v in best.values)
    return BestResult(
        study=study.study_name,
        best_trial=best.number,
        best_value=values[0],
        best_params=dict(best.params),
        n_trials=n_trials,
        states=states,
        gap=best.user_attrs.get(GAP),
        train_accuracy=train[-1],
        gave_up=tuple(gave_up(study)),
        metrics=tuple(study.metric_names or [METRIC_NAME] * len(study.directions)),
        directions=tuple(d.name.lower() for d in study.directions),
        best_values=values,
        best_trials=tuple(
            {"trial": t.number, "params": dict(t.params), "values": [float(v) for v in t.values]}
            for t in choice.front
        ),
        feasible=choice.feasible,
        max_gap=choice.max_gap,
        tied=tied is not None,
    )


def write_json(
    result: BestResult, spec: StudySpec, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the export JSON."""
    path = Path(path)
    with writing(path, "--out"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(spec, extra), indent=2) + "\n")
    return path


@contextlib.contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Turn a failed write into a one-line error that names the path."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename and str(e.filename) != str(path) else ""
        raise TunerError(
            f"cannot write {path} ({where}{e.strerror or e}); pick a writable path for {option}"
        ) from None


def check_output(
    path: Path, option: str, *, folder: bool = False, mkdir: bool = False, force: bool = False
) -> None:
    """Fail before any work when ``path`` cannot be written: a file in the way, no rights.

    Export checks every output first, so a bad ``--out`` does not surface only after
    the model has been built and saved. The folder that is to hold ``path`` must
    exist, unless ``mkdir`` says to create it: a mistyped folder is not made silently.
    """
    existing = nearest_existing(path if folder else path.parent)
    with writing(path, option):
        if folder and path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "it is a file, not a folder")
        if not folder and path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file, not a folder")
        if existing is not None:
            probe_writable(existing)
    taken = [path] if not folder else sorted(path.glob("*.png")) if path.is_dir() else []
    if taken and taken[0].exists() and not force:
        what = f"{path} exists" if not folder else f"{path} holds plots already ({taken[0].name})"
        raise TunerError(
            f"{what}; add --force to overwrite, or give {option} another path (such as one "
            "named after the study)"
        )
    if not mkdir and not path.parent.is_dir():
        raise TunerError(
            f"cannot write {path}: its folder {path.parent.absolute()} does not exist; create "
            f"it, or add --mkdir to create it"
        )


LABEL_MAX = 48  # longer parameter labels give way to trial numbers on the sweep chart


def _sort_key(trial: FrozenTrial) -> tuple[tuple[int, Any], ...]:
    return tuple(
        (0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in trial.params.values()
    )


def _labels(trials: list[FrozenTrial]) -> dict[int, str]:
    """Each trial's label on the sweep chart: the parameters that vary among ``trials``.

    The parameters are named (``learning_rate=0.001``); when the labels would crowd
    the chart, trials are named by number instead.
    """
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    varying = [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1] or names
    labels = {
        t.number: format_params({n: t.params[n] for n in varying if n in t.params}) for t in trials
    }
    if max(map(len, labels.values()), default=0) > LABEL_MAX:  # the legend would crowd out
        return {t.number: f"trial={t.number}" for t in trials}  # the plot; status names them
    return labels


def _curves(trials: list[FrozenTrial]) -> dict[str, tuple[list[float], list[float]]]:
    """Each trial's first metric per epoch, on training and validation data."""
    from tuner.results.plots import epoch_values

    labels = _labels(trials)
    curves = {}
    for t in sorted(trials, key=_sort_key):
        val = [v for _, v in sorted(epoch_values(t).items())]
        train = t.user_attrs.get(TRAIN_VALUES) or t.user_attrs.get(TRAIN_ACCURACY, [])
        curves[labels[t.number]] = ([math.nan if v is None else v for v in train], val)
    return curves


def write_plots(study: optuna.Study, folder: str | Path, top_n: int = 3) -> list[Path]:
    """Write the manual sweep's chart and the search plots as PNGs; returns their paths.

    With more than one hyperparameter, Optuna's importances and slice plots join them.
    """
    from tuner.results import plots

    best_result(study)  # a clear error for a study with nothing to plot
    folder = Path(folder)
    with writing(folder, "--plots"):
        folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    warm = [t for t in finished if t.user_attrs.get(WARM_START)]
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.values is not None]
    name, _ = plots.objective_of(study)
    top = ranked(complete, study.directions)[:top_n]
    chosen = list({t.number: t for t in [*warm, *top]}.values())
    metric = (study.metric_names or ["val_accuracy"])[0].removeprefix("val_")
    shown = plots.METRIC_NAMES.get(metric, metric)
    figures = {
        "sweep.png": lambda: plots.learning_curve_figure(
            _curves(chosen),
            f"Train and validation {shown}: warm-start points and top trials",
            shown,
        ),
        "accuracy_vs_learning_rate.png": lambda: plots.accuracy_vs_rate_figure(finished, name),
        "optimization_history.png": lambda: plots.history_figure(study),
        "intermediate_values.png": lambda: plots.intermediate_figure(study),
    }
    if len(study.directions) > 1:
        figures["pareto_front.png"] = lambda: plots.pareto_figure(study)
    if len({name for t in finished for name in t.params}) > 1:
        figures["param_importances.png"] = lambda: plots.importances_figure(study)
        figures["slice.png"] = lambda: plots.slice_figure(study)
    with writing(folder, "--plots"):
        return [plots.save_figure(make(), folder / name) for name, make in figures.items()]
