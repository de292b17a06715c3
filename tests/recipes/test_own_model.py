"""A user's own project, end to end: their head and their whole model, tuned by two workers.

The project lives in a temporary folder outside the repository, written the way
the README says: a package with two recipe functions, and a spec for each that
tunes three hyperparameters of mixed kinds. A pool of two workers runs each
study from the project folder; then every trial must hold every parameter,
the head study must use the feature cache, each warm-start point must run
once, and the exported model must load in plain Keras (without tuner or the
user's package) and give the best trial's validation accuracy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_tuner

pytestmark = pytest.mark.slow

MODELS = '''
"""Recipes of a user's own: a head on cached base features, and a small whole network."""

import keras


def build_head(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dense(params["units"], activation=params["activation"])(inputs)
    x = keras.layers.Dropout(params["droprate"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


class Scale(keras.layers.Layer):
    def call(self, x):
        return 0.5 * x


def build_head_custom(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = Scale()(inputs)
    x = keras.layers.Dense(params["units"], activation=params["activation"])(x)
    x = keras.layers.Dropout(params["droprate"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def build_model(params, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for _ in range(params["blocks"]):
        x = keras.layers.Conv2D(params["filters"], 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(params["droprate"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
'''

HEAD_SPEC = """
[data]
dir = "{data}"
image_size = [32, 32]
batch_size = 8
[model]
recipe = "mymodels.recipes:build_head"
base = "mobilenetv3large"
weights = "none"
[train]
epochs = 2
[search]
warm_start = [
    {{learning_rate = 1e-2, units = 16, activation = "relu", droprate = 0.0}},
    {{learning_rate = 1e-3, units = 64, activation = "tanh"}},
    {{units = 32}},
]
[search.units]
low = 8
high = 64
log = true
[search.activation]
choices = ["relu", "tanh"]
[search.droprate]
low = 0.0
high = 0.5
[cache]
dir = "{cache}"
"""

MODEL_SPEC = """
[data]
dir = "{data}"
image_size = [32, 32]
batch_size = 8
[model]
recipe = "mymodels.recipes:build_model"
[train]
epochs = 2
[search]
warm_start = [{{learning_rate = 3e-3, filters = 8, blocks = 1}}, {{blocks = 2}}]
[search.filters]
choices = [4, 8]
[search.blocks]
low = 1
high = 2
[search.droprate]
low = 0.0
high = 0.4
step = 0.2
"""

# Loads the exported model with tuner and the user's package out of reach.
PLAIN_KERAS = """
import json, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tuner", "mymodels"):
            raise ImportError(f"{name} must not be needed")

sys.meta_path.insert(0, Refuse())
import keras, numpy as np

model = keras.saving.load_model(sys.argv[1])
classes = json.load(open(sys.argv[1].removesuffix(".keras") + ".classes.json"))
ds = keras.utils.image_dataset_from_directory(
    sys.argv[2], label_mode="categorical", class_names=classes, batch_size=8, shuffle=False,
    image_size=tuple(model.input_shape[1:3]), verbose=False,
)
right = total = 0
for images, labels in ds:
    logits = model.predict(images, verbose=0)
    right += int((logits.argmax(1) == labels.numpy().argmax(1)).sum())
    total += len(labels)
print(json.dumps({"accuracy": right / total, "total": total}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    root = tmp_path_factory.mktemp("user-project")
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "recipes.py").write_text(textwrap.dedent(MODELS))
    for name, spec in (("head", HEAD_SPEC), ("net", MODEL_SPEC)):
        text = spec.format(data=tiny_data, cache=root / "cache")
        (root / "studies").mkdir(exist_ok=True)
        (root / "studies" / f"{name}.toml").write_text(text)
    return root


def _worker(project: Path, study: str, *args: str) -> str:
    done = run_tuner("worker", "--study", f"studies/{study}.toml", *args, cwd=project, timeout=480)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def _trials(project: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{project / study}.db").trials


def _export(project: Path, study: str) -> dict:
    out = project / f"{study}-export"
    done = run_tuner(
        "export", "--study", f"studies/{study}.toml", "--out", str(out / "best.json"),
        "--model", str(out / "best.keras"), "--plots", str(out / "plots"), "--mkdir",
        cwd=project, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((out / "best.json").read_text())


def _plain_keras_accuracy(model: Path, validation: Path, cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, str(model), str(validation)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_study(project: Path, study: str, names: set[str], warm: int) -> None:
    trials = _trials(project, study)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(set(t.params) == names for t in trials), [t.params for t in trials]
    assert len({t.user_attrs["worker"] for t in trials}) >= 1
    warmed = [t for t in trials if t.user_attrs.get("warm_start")]
    assert len(warmed) == warm  # each point once, however many workers started


def _check_export(project: Path, study: str, names: set[str], tiny_data: Path) -> None:
    result = _export(project, study)
    best = optuna.load_study(study_name=study, storage=f"sqlite:///{project / study}.db")
    assert result["best_params"] == best.best_trial.params and set(result["best_params"]) == names
    plots = {p.name for p in (project / f"{study}-export" / "plots").glob("*.png")}
    assert {"sweep.png", "param_importances.png", "slice.png"} <= plots
    assert "accuracy_vs_learning_rate.png" in plots
    model = project / f"{study}-export" / "best.keras"
    plain = _plain_keras_accuracy(model, tiny_data / "validation", cwd=project.parent)
    assert abs(plain["accuracy"] - result["best_value"]) <= 1 / plain["total"] + 1e-6
    assert result["validation_accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6)


def test_a_users_head_recipe_on_two_workers(project: Path, tiny_data: Path) -> None:
    names = {"learning_rate", "units", "activation", "droprate"}
    log = _worker(project, "head", "--workers", "2", "--n-trials", "6")
    assert "[w0]" in log and "[w1]" in log
    assert log.count("computing frozen-base features once") == 1  # the other one waits
    if len(os.sched_getaffinity(0)) >= 2:  # a pool's extraction gets every core, not a share
        cores = len(os.sched_getaffinity(0))
        assert "features once into" in log and f"with all {cores} CPU threads" in log, log
        assert "extracting here" not in log, log  # the extraction process did not fail
    if "waiting for the frozen-base features" in log:  # it names the worker it waits for
        assert re.search(r"features that worker [^ ]+:\d+ computes", log)
    assert "absl" not in log and "oneDNN" not in log  # TensorFlow's start-up lines
    assert "learning_rate=" in log and "units=" in log and "activation=" in log
    _check_study(project, "head", names, warm=3)
    first = _trials(project, "head")
    assert {t.user_attrs["cache"] for t in first} <= {"hit", "miss"}
    _worker(project, "head", "--n-trials", "8")  # a later worker finds the features cached
    later = _trials(project, "head")[len(first) :]
    assert [t.user_attrs["cache"] for t in later] == ["hit", "hit"]
    _check_study(project, "head", names, warm=3)
    _check_export(project, "head", names, tiny_data)


def test_a_users_whole_model_recipe_on_two_workers(project: Path, tiny_data: Path) -> None:
    names = {"learning_rate", "filters", "blocks", "droprate"}
    log = _worker(project, "net", "--workers", "2", "--n-trials", "5")
    assert "recipe 'mymodels.recipes:build_model' trains its whole network" in log
    _check_study(project, "net", names, warm=2)
    trials = _trials(project, "net")
    assert {t.user_attrs["cache"] for t in trials} == {"off"}
    warmed = [t.params for t in trials if t.user_attrs.get("warm_start")]
    assert {"learning_rate": 3e-3, "filters": 8, "blocks": 1}.items() <= warmed[0].items()
    assert warmed[1]["blocks"] == 2
    _check_export(project, "net", names, tiny_data)


def test_a_model_plain_keras_cannot_load_is_not_exported(project: Path) -> None:
    custom = ["--set=model.recipe=mymodels.recipes:build_head_custom", "--set=study.name=custom"]
    log = _worker(project, "head", "--n-trials", "1", *custom)
    assert "the class Scale from mymodels.recipes" in log  # said at once, as a warning
    model = project / "custom.keras"
    done = run_tuner(
        "export", "--study", "studies/head.toml", *custom, "--model", str(model),
        cwd=project, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Scale" in lines[0] and "keras.layers" in lines[0]
    assert not model.exists()
