"""``tuner status``: a pure summary of a study, and its rendering as rich tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from rich.console import RenderableType
from rich.table import Table

from tuner.common.attrs import (
    CACHE,
    CACHE_REASON,
    GAP,
    METRIC_GAP,
    SPACE_ATTR,
    TRAIN_ACCURACY,
    TRAIN_VALUES,
    WORKER,
)
from tuner.space.params import format_params, format_value
from tuner.storages import counts
from tuner.storages.counts import Tie
from tuner.storages.retries import gave_up
from tuner.study.choice import (
    TIE_AT,
    TIE_TOLERANCE,
    Choice,
    choose,
    ranked,
    tie_line,
    tied_value,
)
from tuner.study.opening import study_attr, value_labels
from tuner.study.phases import WorkerPhase, phase_attrs, read_phases

__all__ = ["StudySummary", "render_status", "summarize", "workers_line"]


@dataclass(frozen=True)
class StudySummary:
    """What ``tuner status`` shows."""

    name: str
    states: dict[str, int]
    top: list[FrozenTrial]  # best first, complete trials only
    running: list[FrozenTrial]
    now: dt.datetime
    params: list[str]  # the hyperparameters, in the order of the stored space
    gave_up: list[dict[str, Any]] = field(default_factory=list)
    workers: list[WorkerPhase] = field(default_factory=list)  # live ones first
    label: str = "val_acc"  # the trials' value: the study's metric
    labels: list[str] = field(default_factory=list)  # one per objective; [label] for one
    choice: Choice | None = None  # the best trial by tuner.study.choice's rule
    all_trials: list[FrozenTrial] = field(default_factory=list)  # empty when counted in SQL
    tie: Tie | None = None  # every complete trial scores the same (see tied_value)

    @property
    def alive(self) -> list[WorkerPhase]:
        """The workers that published their phase within the last minute and did not exit."""
        return [w for w in self.workers if w.alive(_utc(self.now))]


RECENT_S = 300.0  # workers that ended longer ago fold into one row of the Workers table


def _utc(now: dt.datetime) -> dt.datetime:
    return now.astimezone(dt.timezone.utc)


def summarize(
    study: optuna.Study, top_n: int = 5, max_gap: float = 0.0, storage: BaseStorage | None = None
) -> StudySummary:
    """Count trials by state and pick the top complete ones and the running ones.

    ``max_gap`` is the study's ``objective.max_gap``: the best trial is then the best
    within it (see :mod:`tuner.study.choice`). ``storage`` is the study's storage as
    opened: on an RDB storage, a study of one objective without ``max_gap`` is counted
    and ranked by the database (:mod:`tuner.storages.counts`), and only the trials
    shown are read; ``all_trials`` is then empty.
    """
    found = counts.rdb(storage)
    if found is not None and len(study.directions) == 1 and max_gap <= 0:
        return _summarize_in_sql(study, found, top_n)
    trials = study.get_trials(deepcopy=False)
    stored = study_attr(study, SPACE_ATTR) or {}
    params = list(dict.fromkeys([*stored, *(n for t in trials for n in t.params)]))
    states = {s.name: 0 for s in TrialState}
    for t in trials:
        states[t.state.name] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    top = ranked(complete, study.directions)[:top_n]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    tied = tied_value(complete)
    tie = counts.Tie(len(complete), tied) if tied is not None else None
    return _summary(study, states, top, running, params, choose(study, max_gap), trials, tie)


def _summarize_in_sql(study: optuna.Study, storage: RDBStorage, top_n: int) -> StudySummary:
    """:func:`summarize` with the counting and ranking done by the database."""
    study_id = study._study_id
    stored = study_attr(study, SPACE_ATTR) or {}
    params = list(dict.fromkeys([*stored, *counts.param_names(storage, study_id)]))
    states = {s.name: 0 for s in TrialState}
    states.update(counts.state_counts(storage, study_id))
    top = counts.best_trials(storage, study_id, study.direction, top_n)
    running = counts.trials_in(storage, study_id, TrialState.RUNNING)
    choice = Choice(top[0], [top[0]]) if top else None
    tie = counts.tie(storage, study_id, TIE_AT, TIE_TOLERANCE)
    return _summary(study, states, top, running, params, choice, [], tie)


def _summary(
    study: optuna.Study,
    states: dict[str, int],
    top: list[FrozenTrial],
    running: list[FrozenTrial],
    params: list[str],
    choice: Choice | None,
    trials: list[FrozenTrial],
    tie: counts.Tie | None,
) -> StudySummary:
    now = dt.datetime.now()
    workers = read_phases(phase_attrs(study), _utc(now))
    labels = value_labels(study)
    return StudySummary(
        study.study_name, states, top, running, now, params, gave_up(study), workers,
        labels[0], labels, choice, trials, tie,
    )  # fmt: skip


def _fmt(value: object, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _values(trial: FrozenTrial, names: list[str]) -> list[str]:
    return [format_value(trial.params[n]) if n in trial.params else "-" for n in names]


def _best_line(summary: StudySummary, choice: Choice) -> str:
    best = choice.best
    labels = summary.labels or [summary.label]
    values = ", ".join(f"{n} {v:.4f}" for n, v in zip(labels, best.values or [], strict=False))
    gap = best.user_attrs.get(METRIC_GAP, best.user_attrs.get(GAP))
    line = f"Best: trial {best.number}, {format_params(best.params)}, {values}"
    if len(labels) > 1:
        line += f" (the front's best {labels[0]})"
    else:
        line += f", train/val gap {_fmt(gap)}"
    if choice.feasible is True:
        line += f" (the best within objective.max_gap {choice.max_gap:g})"
    elif choice.feasible is False:
        line += (
            f"; no trial has a gap within objective.max_gap {choice.max_gap:g}, so this is "
            "the best of all"
        )
    return line


def _trials_table(summary: StudySummary, title: str, trials: list[FrozenTrial]) -> Table:
    labels = summary.labels or [summary.label]
    table = Table(title=title, title_justify="left")
    # the first metric on the training data, and its gap (train_acc and gap for val_acc)
    train_col = "train_" + labels[0].removeprefix("val_")
    gap = [] if "gap" in labels else ["gap"]  # an objective of its own already
    for col in ("trial", *summary.params, *labels, train_col, *gap, "cache"):
        table.add_column(col, justify="right", min_width=len(col))
    for t in trials:
        train = t.user_attrs.get(TRAIN_VALUES) or t.user_attrs.get(TRAIN_ACCURACY) or [None]
        values = list(t.values or [None] * len(labels))
        extra = [_fmt(train[-1])]
        extra += [_fmt(t.user_attrs.get(METRIC_GAP, t.user_attrs.get(GAP)))] if gap else []
        table.add_row(
            str(t.number),
            *_values(t, summary.params),
            *(_fmt(v) for v in values),
            *extra,
            str(t.user_attrs.get(CACHE, "-")),
        )
    return table


def render_status(summary: StudySummary) -> list[RenderableType]:
    """Tables for the states, the best and top trials, and the running trials."""
    counts = Table(title=f"Study {summary.name}: trials by state", title_justify="left")
    for state in summary.states:
        counts.add_column(state, justify="right")
    counts.add_row(*(str(n) for n in summary.states.values()))
    out: list[RenderableType] = [counts]
    choice = summary.choice
    if summary.top and choice is not None:
        out.append(_best_line(summary, choice))
        if len(summary.labels) > 1:
            n = len(choice.front)
            title = f"Pareto front: {n} trial{'s' if n != 1 else ''}, best first"
            out.append(_trials_table(summary, title, choice.front))
        out.append(_trials_table(summary, f"Top {len(summary.top)} trials", summary.top))
        if summary.tie is not None:
            out.append(f"Note: {tie_line(summary.tie.count, summary.label, summary.tie.value)}.")
        if reason := choice.best.user_attrs.get(CACHE_REASON):
            out.append(f"Feature cache off: {reason}.")
    elif summary.alive:
        out.append(f"No complete trial yet; {workers_line(summary)}.")
    if summary.running:
        running = Table(title="Running trials", title_justify="left")
        for col in ("trial", *summary.params, "epochs done", "worker", "elapsed"):
            running.add_column(col, justify="right", min_width=len(col))
        for t in summary.running:
            start = t.datetime_start or summary.now
            running.add_row(
                str(t.number),
                *_values(t, summary.params),
                str(len(t.intermediate_values)),
                str(t.user_attrs.get(WORKER, "-")),
                str(dt.timedelta(seconds=int((summary.now - start).total_seconds()))),
            )
        out.append(running)
    elif summary.alive:
        out.append(f"No running trials; {workers_line(summary)}.")
    else:
        out.append("No running trials, and no worker alive.")
    if summary.workers:
        out.append(_workers_table(summary))
    if summary.gave_up:
        given = Table(
            title="Given up: retries ran out (raise storage.max_retry to try more)",
            title_justify="left",
        )
        for col in ("first trial", "parameters", "attempts", "trials", "last reason"):
            given.add_column(col, justify="right" if col != "last reason" else "left")
        for r in summary.gave_up:
            given.add_row(
                str(r["trial"]),
                format_params(r.get("params", {})) or "-",
                str(r.get("attempts", "-")),
                ", ".join(map(str, r.get("trials", []))),
                str(r.get("reason") or "-"),
            )
        out.append(given)
    return out


def workers_line(summary: StudySummary) -> str:
    """How many workers are alive and what they do, in one phrase."""
    phases = ", ".join(f"{w.worker} {w.phase}" for w in summary.alive)
    return f"{len(summary.alive)} worker{'s' if len(summary.alive) > 1 else ''} at work ({phases})"


def _workers_table(summary: StudySummary) -> Table:
    table = Table(title="Workers", title_justify="left")
    for col in ("worker", "phase", "progress", "last seen"):
        table.add_column(col, justify="left" if col != "last seen" else "right")
    now = _utc(summary.now)
    shown, folded = [], []
    for w in summary.workers:  # those that ended a while ago fold into one row
        ended = not w.alive(now) and w.age(now) > RECENT_S
        (folded if ended else shown).append(w)
    for w in shown:
        age = w.age(now)
        gone = "" if w.phase == "exited" or w.alive(now) else " (silent: dead?)"
        table.add_row(w.worker, w.phase, w.progress or "-", f"{age:.0f} s ago{gone}")
    if folded:
        last = min(w.age(now) for w in folded)
        what = f"{len(folded)} earlier worker{'s' if len(folded) > 1 else ''}"
        table.add_row(what, "ended", "-", f"{last:.0f} s ago and before")
    return table
