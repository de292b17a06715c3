"""User attributes written together: the same record on every backend; finished trials refuse."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage

from tests.conftest import unique_name
from tuner.attr_writes import set_user_attrs
from tuner.faults import StorageWatch
from tuner.resilient import ResilientStorage
from tuner.spec import load_spec
from tuner.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

RECORD = {"train_accuracy": [0.25, 0.5], "gap": None, "cache": "hit", "worker": "host:1"}


def _wrappers() -> dict[str, Callable[[BaseStorage], BaseStorage]]:
    watch = StorageWatch(30, "test", lambda _: None, lambda f: f.reason, sleep=lambda _: None)
    return {"plain": lambda s: s, "resilient": lambda s: ResilientStorage(s, watch)}


@pytest.mark.parametrize("wrap", ["plain", "resilient"])
def test_attributes_written_together_read_back_as_one_by_one(storage_url: str, wrap: str) -> None:
    spec = load_spec("clothing", [f"study.name={unique_name()}"])
    storage = _wrappers()[wrap](open_storage(storage_url, spec))
    study = optuna.create_study(study_name=spec.study.name, storage=storage)
    trial = study.ask()
    trial.set_user_attr("gap", 0.1)  # overwritten, as set_user_attr would
    set_user_attrs(trial, RECORD)
    set_user_attrs(trial, {})
    study.tell(trial, 0.5)
    assert study.trials[0].user_attrs == RECORD
    with pytest.raises(UpdateFinishedTrialError):
        set_user_attrs(trial, {"gap": 0.2})
    assert study.trials[0].user_attrs["gap"] is None


def test_a_storage_without_transactions_gets_one_call_per_attribute() -> None:
    study = optuna.create_study(storage=InMemoryStorage())
    trial = study.ask()
    set_user_attrs(trial, RECORD)
    assert study.trials[0].user_attrs == RECORD
