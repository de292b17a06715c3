"""Offline in one step: the command that works, and when a worker may download the data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config.spec import load_spec
from tuner.runner.offline import offline_advice, spec_names_folder

XCEPTION_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture(autouse=True)
def _empty_keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("tuner.assets.weights.imagenet_cache_files", lambda base: [])
    monkeypatch.setattr("tuner.runner.offline.imagenet_cache_files", lambda base: [])


def test_the_first_failure_names_data_and_weights_together() -> None:
    advice = offline_advice(load_spec("clothing"), data_ready=False)
    assert advice.startswith(
        "run `tuner worker --study clothing --set data.dir=PATH/clothing-dataset-small "
        f"--set model.weights=PATH/{XCEPTION_FILE}` with a copy of the dataset's"
    )
    assert "model.weights=none" in advice


def test_with_the_data_in_place_the_command_keeps_its_folder() -> None:
    spec = load_spec("clothing", ["data.dir=/srv/clothing"])
    advice = offline_advice(spec, data_ready=True)
    assert "--set data.dir=/srv/clothing --set model.weights=PATH/" in advice
    assert "copy of the dataset" not in advice


@pytest.mark.parametrize(
    ("study", "sets", "weights"),
    [
        ("clothing-scratch", [], ""),  # no base: no weights to fetch
        ("clothing", ["model.weights=none"], ""),
        ("clothing", ["model.weights=/w/x.h5"], " --set model.weights=/w/x.h5"),
    ],
)
def test_weights_appear_only_where_they_are_needed(
    study: str, sets: list[str], weights: str
) -> None:
    advice = offline_advice(load_spec(study, sets), data_ready=False)
    assert f"--set data.dir=PATH/clothing-dataset-small{weights}`" in advice
    assert "notop" not in advice


def test_only_the_spec_files_own_folder_may_be_downloaded_into(tmp_path: Path) -> None:
    assert spec_names_folder(load_spec("clothing"))
    assert not spec_names_folder(load_spec("clothing", ["data.dir=data/clothng"]))
    own = tmp_path / "mine.toml"
    own.write_text('[data]\ndir = "elsewhere/clothing"\nsource = "clothing"\n')
    assert spec_names_folder(load_spec(str(own)))
