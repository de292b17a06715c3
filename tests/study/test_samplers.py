"""sampler.kind: Optuna's samplers by name, seeded per worker, checked in the spec and on join."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna
import pytest
from optuna.samplers import QMCSampler, RandomSampler, TPESampler

from tuner.config.build import open_study, sampler_budget
from tuner.config.join import check_joinable
from tuner.config.spec import load_spec
from tuner.errors import SpecError, StudyError
from tuner.storages.storage import open_storage
from tuner.study.samplers import build_sampler


@pytest.mark.parametrize(
    ("kind", "cls"), [("tpe", TPESampler), ("random", RandomSampler), ("qmc", QMCSampler)]
)
def test_each_kind_is_optunas_own_sampler(kind: str, cls: type) -> None:
    sampler = build_sampler(
        load_spec("clothing", [f"sampler.kind={kind}"]).sampler, worker_index=2
    )
    assert isinstance(sampler, cls)


def test_workers_get_different_seeds() -> None:
    spec = load_spec("clothing", ["sampler.kind=random"])
    draws = []
    for index in (0, 1):
        study = optuna.create_study(sampler=build_sampler(spec.sampler, index))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        draws.append([t.params["x"] for t in study.trials])
    assert draws[0] != draws[1]


def test_gp_without_pytorch_is_a_spec_error_naming_the_extra() -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed here, so GPSampler can be built")
    with pytest.raises(SpecError, match=r"pip install 'tuner\[gp\]'"):
        build_sampler(load_spec("clothing", ["sampler.kind=gp"]).sampler)


def test_grid_runs_the_warm_start_points_and_stops() -> None:
    spec = load_spec("clothing", ["sampler.kind=grid"])
    assert sampler_budget(spec, 20) == 4
    assert sampler_budget(spec, 3) == 3
    assert sampler_budget(load_spec("clothing"), 20) == 20


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.kind=cmaes", "sampler.kind 'cmaes' is not one of: tpe, gp, random, qmc, grid"),
        ("search.warm_start=[]", "sampler.kind = grid runs the search.warm_start points"),
    ],
)
def test_bad_kinds_are_spec_errors(override: str, message: str) -> None:
    overrides = [override] if "cmaes" in override else ["sampler.kind=grid", override]
    with pytest.raises(SpecError, match=message):
        load_spec("clothing", overrides)


def test_a_worker_with_another_kind_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = load_spec("clothing")
    open_study(spec, open_storage(url, spec.storage))
    other = load_spec("clothing", ["sampler.kind=random"])
    with pytest.raises(StudyError, match=r"sampler.kind=tpe, but this worker has sampler.kind"):
        check_joinable(other, open_storage(url, other.storage))
