"""``tuner status``: a pure summary of a study, and its rendering as rich tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import RenderableType
from rich.table import Table

from tuner.retries import gave_up

__all__ = ["StudySummary", "render_status", "summarize"]


@dataclass(frozen=True)
class StudySummary:
    """What ``tuner status`` shows."""

    name: str
    states: dict[str, int]
    top: list[FrozenTrial]  # best first, complete trials only
    running: list[FrozenTrial]
    now: dt.datetime
    gave_up: list[dict[str, Any]] = field(default_factory=list)


def summarize(study: optuna.Study, top_n: int = 5) -> StudySummary:
    """Count trials by state and pick the top complete ones and the running ones."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name: 0 for s in TrialState}
    for t in trials:
        states[t.state.name] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    top = sorted(complete, key=lambda t: (-(t.value or 0.0), t.number))[:top_n]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return StudySummary(study.study_name, states, top, running, dt.datetime.now(), gave_up(study))


def _fmt(value: object, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def render_status(summary: StudySummary) -> list[RenderableType]:
    """Tables for the states, the best and top trials, and the running trials."""
    counts = Table(title=f"Study {summary.name}: trials by state", title_justify="left")
    for state in summary.states:
        counts.add_column(state, justify="right")
    counts.add_row(*(str(n) for n in summary.states.values()))
    out: list[RenderableType] = [counts]
    if summary.top:
        best = summary.top[0]
        out.append(
            f"Best: trial {best.number}, learning rate {best.params['learning_rate']:.4g}, "
            f"val_acc {best.value:.4f}, train/val gap {_fmt(best.user_attrs.get('gap'))}"
        )
        top = Table(title=f"Top {len(summary.top)} trials", title_justify="left")
        for col in ("trial", "learning rate", "val_acc", "train_acc", "gap", "cache"):
            top.add_column(col, justify="right")
        for t in summary.top:
            train = t.user_attrs.get("train_accuracy") or [None]
            top.add_row(
                str(t.number),
                f"{t.params['learning_rate']:.4g}",
                _fmt(t.value),
                _fmt(train[-1]),
                _fmt(t.user_attrs.get("gap")),
                str(t.user_attrs.get("cache", "-")),
            )
        out.append(top)
    else:
        out.append("No complete trial yet.")
    if summary.running:
        running = Table(title="Running trials", title_justify="left")
        for col in ("trial", "learning rate", "epochs done", "worker", "elapsed"):
            running.add_column(col, justify="right")
        for t in summary.running:
            start = t.datetime_start or summary.now
            running.add_row(
                str(t.number),
                f"{t.params.get('learning_rate', float('nan')):.4g}",
                str(len(t.intermediate_values)),
                str(t.user_attrs.get("worker", "-")),
                str(dt.timedelta(seconds=int((summary.now - start).total_seconds()))),
            )
        out.append(running)
    else:
        out.append("No running trials.")
    if summary.gave_up:
        given = Table(
            title="Given up: retries ran out (raise storage.max_retry to try more)",
            title_justify="left",
        )
        for col in ("first trial", "parameters", "attempts", "trials", "last reason"):
            given.add_column(col, justify="right" if col != "last reason" else "left")
        for r in summary.gave_up:
            params = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.get("params", {}).items()
            )
            given.add_row(
                str(r["trial"]),
                params or "-",
                str(r.get("attempts", "-")),
                ", ".join(map(str, r.get("trials", []))),
                str(r.get("reason") or "-"),
            )
        out.append(given)
    return out
