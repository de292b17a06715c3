"""The trial line's bookkeeping: each finished trial weighed once, a tie said once."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tuner.runner.announce import Announcer
from tuner.study.seen import FinishedScan


def _study(values: list[float | None]) -> optuna.Study:
    """A study whose trials score ``values`` (None: a trial still running)."""
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for v in values:
        state = TrialState.RUNNING if v is None else TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=v, state=state)
        )
    return study


def test_each_finished_trial_is_handed_out_once_and_open_ones_when_they_finish() -> None:
    seen = FinishedScan()
    first = _study([0.1, None, 0.3]).trials
    assert [t.number for t in seen.newly_finished(first)] == [0, 2]
    assert seen.newly_finished(first) == []  # read again: nothing new
    later = [*first[:1], _finished(first[1], 0.2), first[2], *_study([0.4] * 4).trials[3:]]
    assert [t.number for t in seen.newly_finished(later)] == [1, 3]


def _finished(trial: FrozenTrial, value: float) -> FrozenTrial:
    done = optuna.trial.create_trial(
        params=trial.params, distributions=trial.distributions, value=value
    )
    done.number = trial.number
    return done


def test_a_tie_is_said_once_and_only_while_every_complete_trial_ties(
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = _study([0.25, 0.25, 0.25, 0.25])
    announce = Announcer(study)
    announce.seen(study.trials[:2])
    announce(study, study.trials[2])  # the third complete trial that scores the same
    assert "all 3 finished trials score val_acc=0.2500" in capsys.readouterr().err
    announce.seen(study.trials)
    announce(study, study.trials[3])
    assert "all 4" not in capsys.readouterr().err  # said once

    study = _study([0.25, 0.5, 0.25, 0.25])
    announce = Announcer(study)
    announce.seen(study.trials)
    announce(study, study.trials[3])
    assert "finished trials score" not in capsys.readouterr().err
