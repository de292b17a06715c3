"""A worker joining a study takes the study's stored settings: the quickstart's second command
needs none of the first worker's ``--set`` options."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import Cli, Env

pytestmark = pytest.mark.slow


def test_a_second_worker_joins_without_repeating_the_first_ones_settings(
    env: Env, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)  # no data/clothing-dataset-small here: only the study knows
    first = ["worker", "--study", "clothing", "--storage", env.url, "--n-trials", "1"]
    code, _, err = cli(*first, *env.overrides(epochs=1))
    assert code == 0, err
    code, _, err = cli("worker", "--study", "clothing", "--storage", env.url, "--n-trials", "2")
    assert code == 0, err
    assert "joining study 'clothing' with its stored settings:" in err
    assert f"data.dir={env.data}" in err and "model.weights=none" in err
    assert "downloading" not in err
    study = optuna.load_study(study_name="clothing", storage=env.url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 2
    assert all(len(t.user_attrs["epoch_seconds"]) == 1 for t in trials)  # train.epochs=1 too
    # A setting given explicitly that differs from the study's is still refused.
    code, _, err = cli(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "3",
        "--set", "model.weights=imagenet",
    )  # fmt: skip
    assert code == 2
    assert "model.weights=none, but this worker has model.weights=imagenet" in err
    assert not Path("data").exists()
