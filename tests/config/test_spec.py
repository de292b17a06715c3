"""Spec parsing, defaults, ``--set`` overrides and their precedence (no TensorFlow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tuner.config.spec import StudySpec, available_studies, load_spec, parse_override, spec_to_dict
from tuner.errors import SpecError


def test_clothing_defaults_follow_the_design() -> None:
    spec = load_spec("clothing")
    lr = spec.search.learning_rate
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-1, True)
    assert spec.train.epochs == 10
    assert spec.data.image_size == (150, 150)
    assert spec.data.batch_size == 32
    assert spec.model.weights == "imagenet"
    assert spec.model.recipe == "xception-head"
    assert spec.pruner.kind == "median"
    assert spec.cache.enabled is True
    assert (spec.storage.heartbeat_interval, spec.storage.grace_period) == (60, 180)
    assert isinstance(spec.sampler.seed, int)
    assert spec.search.warm_start == tuple({"learning_rate": r} for r in (1e-4, 1e-3, 1e-2, 1e-1))
    assert list(spec.search.space) == ["learning_rate"]
    assert spec.study.name == "clothing"


def test_set_overrides_every_contract_key() -> None:
    spec = load_spec(
        "clothing",
        [
            "search.learning_rate.low=1e-5",
            "search.learning_rate.high=0.5",
            "search.learning_rate.log=false",
            "train.epochs=2",
            "data.dir=/tmp/somewhere",
            "data.image_size=[96, 128]",
            "model.weights=none",
            "pruner.kind=hyperband",
            "cache.enabled=false",
            "storage.heartbeat_interval=5",
            "storage.grace_period=20",
            "sampler.seed=7",
        ],
    )
    assert spec.search.learning_rate.low == 1e-5
    assert spec.search.learning_rate.high == 0.5
    assert spec.search.learning_rate.log is False
    assert spec.train.epochs == 2
    assert spec.data.dir == "/tmp/somewhere"
    assert spec.data.image_size == (96, 128)
    assert spec.model.weights == "none"
    assert spec.pruner.kind == "hyperband"
    assert spec.cache.enabled is False
    assert (spec.storage.heartbeat_interval, spec.storage.grace_period) == (5, 20)
    assert spec.sampler.seed == 7


def test_precedence_override_then_file_then_default(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[train]\nepochs = 3\n[data]\ndir = "d"\n')
    from_file = load_spec(str(path))
    assert from_file.train.epochs == 3  # the file beats the default (10)
    assert from_file.data.batch_size == StudySpec().data.batch_size  # default kept
    assert from_file.study.name == "mine"  # named after the file
    assert load_spec(str(path), ["train.epochs=4"]).train.epochs == 4  # --set beats the file
    assert load_spec(str(path), ["train.epochs=4", "train.epochs=5"]).train.epochs == 5


def test_a_float_key_accepts_an_integer_and_a_value_may_contain_equals() -> None:
    spec = load_spec("clothing", ["search.learning_rate.high=1", "data.dir=/a=b"])
    assert spec.search.learning_rate.high == 1.0
    assert isinstance(spec.search.learning_rate.high, float)
    assert spec.data.dir == "/a=b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=2", ("train.epochs", 2)),
        ("data.dir = some/path", ("data.dir", "some/path")),
        ("cache.enabled=true", ("cache.enabled", True)),
        ("data.image_size=[1, 2]", ("data.image_size", [1, 2])),
        ('model.weights="none"', ("model.weights", "none")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["justaword", "=3", "train..epochs=1", ".x=1"])
def test_malformed_override_is_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_override(text)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochz=3", "unknown key 'train.epochz'; allowed keys here: train.epochs"),
        ("train.epochs=abc", "train.epochs must be an integer"),
        ("train.epochs=true", "train.epochs must be an integer"),
        ("search.learning_rate.low=0.5", "must be below .high"),
        ("search.learning_rate.low=0", "must be > 0 with log"),
        ("data.image_size=[150]", "data.image_size must be a list of 2"),
        ("pruner.kind=sometimes", "pruner.kind 'sometimes' is not one of"),
        ("train=3", "[train] must be a table"),
    ],
)
def test_invalid_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clothing", [override])
    assert needle in str(info.value)
    assert "clothing.toml" in str(info.value)


def test_unknown_study_lists_available_ones() -> None:
    with pytest.raises(SpecError, match=r"available studies: .*clothing"):
        load_spec("no-such-study")
    assert "clothing" in available_studies()


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[train]\nepochs = = 3\n")
    with pytest.raises(SpecError, match=r"broken\.toml.*line 2"):
        load_spec(str(path))


def test_spec_to_dict_is_plain_data() -> None:
    data = spec_to_dict(load_spec("clothing"))
    assert data["data"]["image_size"] == [150, 150]
    assert data["search"]["learning_rate"] == {"low": 1e-4, "high": 1e-1, "log": True}
    assert "spec_file" not in data


def test_search_logic_does_not_import_tensorflow() -> None:
    import subprocess

    code = (
        "import sys, tuner.config.spec, tuner.storages.storage, tuner.study.opening, "
        "tuner.results.export, tuner.results.status, tuner.cli, tuner.space.params, "
        "tuner.config.join, tuner.study.pruners, tuner.study.note, tuner.common.attrs, "
        "tuner.recipes, tuner.training.probe, tuner.runner.worker, tuner.runner.startup; "
        "tuner.config.spec.load_spec('clothing'); "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
