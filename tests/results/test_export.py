"""``tuner status`` and ``tuner export``: JSON, plots, the best model and artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from tests.conftest import Cli, Env, run_tuner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Env:
    """A study with five finished trials on the tiny data (with a test split)."""
    env = Env(root=tmp_path_factory.mktemp("export"), data=tiny_data, cache=Path("unused"))
    env.cache = env.root / "cache"
    done = run_tuner(
        "worker", "--study", "clothing", "--storage", env.url, "--n-trials", "5",
        *env.overrides(epochs=2), cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return env


@pytest.fixture(scope="module")
def exported(finished: Env) -> tuple[Env, dict, Path]:
    out = finished.root / "out"
    done = run_tuner(
        "export", "--study", "clothing", "--storage", finished.url,
        "--out", str(out / "best.json"), "--plots", str(out / "plots"),
        "--model", str(out / "best.keras"), "--mkdir", cwd=finished.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return finished, json.loads((out / "best.json").read_text()), out


def test_json_follows_the_contract_and_agrees_with_optuna(exported: tuple) -> None:
    env, result, _ = exported
    for key in ("study", "best_trial", "best_value", "best_params", "n_trials", "states"):
        assert key in result
    assert result["study"] == "clothing"
    assert set(result["best_params"]) == {"learning_rate"}
    assert sum(result["states"].values()) == result["n_trials"]
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    best = subprocess.run(
        [optuna_cli, "best-trial", "--study-name", "clothing", "--storage", env.url, "-f", "json"],
        capture_output=True,
        text=True,
    )
    assert best.returncode == 0, best.stderr
    trial = json.loads(best.stdout)
    assert (result["best_trial"], result["best_params"]) == (trial["number"], trial["params"])
    assert trial["value"] == {"val_accuracy": pytest.approx(result["best_value"])}
    assert result["gap"] is not None
    assert result["spec"]["train"]["epochs"] == 2


def test_plots_are_valid_pngs(exported: tuple) -> None:
    _, _, out = exported
    pngs = sorted((out / "plots").glob("*.png"))
    # One hyperparameter: no importances or slices, which need several.
    assert {p.name for p in pngs} == {
        "sweep.png", "accuracy_vs_learning_rate.png", "optimization_history.png",
        "intermediate_values.png",
    }  # fmt: skip
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"
            assert image.size[0] > 300


def test_model_loads_plainly_and_reproduces_validation_accuracy(exported: tuple) -> None:
    import keras

    from tuner.assets.datasets import load_split, scan_dataset

    env, result, out = exported
    model = keras.saving.load_model(out / "best.keras")
    classes = json.loads((out / "best.classes.json").read_text())
    scan = scan_dataset(env.data)
    assert classes == list(scan.class_names) == result["class_names"]
    ds = load_split(scan, "validation", (71, 71), 8)
    right = total = 0
    for images, labels in ds:  # raw 0-255 RGB in, logits out
        logits = model.predict(images, verbose=0)
        assert logits.shape[1] == len(classes)
        right += int(np.sum(np.argmax(logits, 1) == np.argmax(labels.numpy(), 1)))
        total += len(labels)
    assert abs(right / total - result["best_value"]) <= 1 / total + 1e-6
    assert 0.0 <= result["test_accuracy"] <= 1.0
    # scored on the workers' cached features: the same accuracy as the model on the images
    assert result["validation_accuracy"] == pytest.approx(right / total, abs=1e-6)


def test_export_refuses_to_overwrite_without_force(exported: tuple, cli: Cli) -> None:
    env, _, out = exported
    before = (out / "best.json").read_text()
    for option, path in (("--out", out / "best.json"), ("--model", out / "best.keras"),
                         ("--plots", out / "plots")):  # fmt: skip
        code, _, err = cli("export", "--storage", env.url, option, str(path))
        assert code == 2, err
        assert f"{path}" in err and "add --force to overwrite" in err
        assert len(err.strip().splitlines()) == 1
    assert (out / "best.json").read_text() == before
    code, _, err = cli(
        "export", "--storage", env.url, "--out", str(out / "best.json"), "--force",
        "--model", str(out / "again.keras"), "--no-test",
    )  # fmt: skip
    assert code == 0, err
    assert "validation accuracy" in err and "its cached features" in err
    assert "test accuracy" not in err
    assert "test_accuracy" not in json.loads((out / "best.json").read_text())


def test_each_finished_trial_keeps_its_learning_curve(exported: tuple) -> None:
    from optuna.artifacts import get_all_artifact_meta

    env, _, _ = exported
    study = optuna.load_study(study_name="clothing", storage=env.url)
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metas = {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=study._storage)}
        curve = metas[trial.user_attrs["curve_artifact"]]
        assert curve.filename == "learning_curve.png"
        assert trial.user_attrs["weights_artifact"] in metas
        assert (env.root / "study-artifacts" / curve.artifact_id).is_file()


def test_status_shows_states_best_top_and_running(finished: Env, cli: Cli) -> None:
    code, out, err = cli("status", "--study", "clothing", "--storage", finished.url)
    assert code == 0, err
    assert "trials by state" in out and "COMPLETE" in out
    assert "Best: trial" in out and "learning_rate=" in out and "gap" in out
    assert "Top 5 trials" in out
    assert "No running trials, and no worker alive." in out


def test_export_of_an_empty_or_unknown_study_is_a_clear_error(tmp_path: Path, cli: Cli) -> None:
    from tuner.config.build import open_study
    from tuner.config.spec import load_spec
    from tuner.storages.storage import open_storage

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    spec = load_spec("clothing")
    open_study(spec, open_storage(url, spec.storage))
    code, _, err = cli("export", "--study", "clothing", "--storage", url)
    assert code == 2 and err.startswith("error: study 'clothing' has no complete trial yet")
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("export", "--study", "clothing", "--storage", url, "--set=study.name=nope")
    assert code == 2 and "study 'nope' does not exist" in err


def test_model_export_without_the_trials_files_says_where_to_point(
    finished: Env, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    """Export on a machine that lacks the workers' artifact folder: one line, nothing made."""
    missing, empty = tmp_path / "elsewhere", tmp_path / "empty"
    empty.mkdir()
    for folder, needle in ((missing, "does not exist"), (empty, "are not in")):
        code, _, err = cli(
            "export", "--study", "clothing", "--storage", finished.url,
            "--model", str(tmp_path / "m.keras"), f"--set=storage.artifacts={folder}",
        )  # fmt: skip
        assert code == 2, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: ") and needle in line and "storage.artifacts" in line
        assert str(folder) in line
    assert not missing.exists() and not (tmp_path / "m.keras").exists()
    assert list(empty.iterdir()) == []


def test_model_export_with_unreachable_imagenet_weights_fails_first(
    finished: Env, tmp_path: Path
) -> None:
    """Export checks the weights before it builds anything, as the worker does."""
    proxy = "http://127.0.0.1:9"  # the discard port: nothing listens
    done = run_tuner(
        "export", "--study", "clothing", "--storage", finished.url,
        "--model", str(tmp_path / "m.keras"), "--set=model.weights=imagenet",
        env={"https_proxy": proxy, "HTTPS_PROXY": proxy, "KERAS_HOME": str(tmp_path / "k")},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ImageNet" in lines[0]
    assert "Downloading" not in done.stdout + done.stderr
    assert not (tmp_path / "m.keras").exists()


def _frozen(number: int, params: dict, state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    trial = optuna.trial.create_trial(
        params=params,
        distributions={k: optuna.distributions.CategoricalDistribution([v]) for k, v in
                       params.items()},
        value=0.5,
        state=state,
    )  # fmt: skip
    trial.number = number
    return trial


def test_sweep_curves_are_labelled_by_the_parameters_that_vary() -> None:
    from tuner.results.export import _labels

    rates = [_frozen(0, {"learning_rate": 1e-3}), _frozen(1, {"learning_rate": 1e-2})]
    assert sorted(_labels(rates).values()) == ["learning_rate=0.001", "learning_rate=0.01"]
    points = [
        _frozen(0, {"learning_rate": 1e-3, "size_inner": 10, "droprate": 0.2}),
        _frozen(1, {"learning_rate": 1e-3, "size_inner": 100, "droprate": 0.2}),
        _frozen(2, {"learning_rate": 1e-3, "size_inner": 100, "droprate": 0.5}),
    ]
    assert _labels(points) == {
        0: "size_inner=10 droprate=0.2",
        1: "size_inner=100 droprate=0.2",
        2: "size_inner=100 droprate=0.5",
    }


@pytest.fixture(scope="module")
def head_study(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Env:
    """The clothing-head study (inner layer and dropout) with four finished trials."""
    env = Env(root=tmp_path_factory.mktemp("head"), data=tiny_data, cache=Path("unused"))
    env.cache = env.root / "cache"
    done = run_tuner(
        "worker", "--study", "clothing-head", "--storage", env.url, "--n-trials", "4",
        *env.overrides(epochs=2), cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return env


def test_a_head_with_an_inner_layer_is_rebuilt_from_its_parameters(head_study: Env) -> None:
    import keras

    from tuner.assets.datasets import load_split, scan_dataset

    out = head_study.root / "out"
    done = run_tuner(
        "export", "--study", "clothing-head", "--storage", head_study.url,
        "--out", str(out / "best.json"), "--model", str(out / "best.keras"),
        "--plots", str(out / "plots"), "--mkdir", cwd=head_study.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "best.json").read_text())
    assert set(result["best_params"]) == {"learning_rate", "size_inner", "droprate"}
    assert {"param_importances.png", "slice.png"} <= {p.name for p in (out / "plots").iterdir()}
    model = keras.saving.load_model(out / "best.keras")
    size = result["best_params"]["size_inner"]
    inner = [w.shape for w in model.weights if w.shape == (2048, size)]
    assert inner or size == 0  # the winning architecture, not the default head
    ds = load_split(scan_dataset(head_study.data), "validation", (71, 71), 8)
    right = total = 0
    for images, labels in ds:
        logits = model.predict(images, verbose=0)
        right += int(np.sum(np.argmax(logits, 1) == np.argmax(labels.numpy(), 1)))
        total += len(labels)
    assert abs(right / total - result["best_value"]) <= 1 / total + 1e-6
