"""A user's own data, model and metric, end to end through the CLI.

The project lives in a temporary folder outside the repository: a package with
data recipes (a regression as NumPy arrays; two inputs as a tf.data pipeline)
and model recipes (one tuner compiles, one compiled by the user), and specs
that minimize ``val_mae``. Two workers share the regression study; a study of
two objectives must show its true Pareto front in status and export; the
constrained form must prune and export a feasible trial; the exported model
must reproduce the best value in a process that cannot import tuner or the
user's package; and every broken data recipe is one ``error:`` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import Cli, run_tuner

pytestmark = pytest.mark.slow

# The regression's data, generated from a fixed seed: written into the user's package, and
# run again by the plain-Keras check, which may not import that package.
DATA = """
import numpy as np

def arrays():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 5)).astype("float32")
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0, 1.5]) + 0.1 * rng.normal(size=240)).astype("float32")
    return (x[:180], y[:180]), (x[180:], y[180:])
"""

PACKAGE = """
import numpy as np
import tensorflow as tf

from mydata.generate import arrays


def load(params, seed):
    return arrays()


def two_inputs(params, seed):
    (x, y), (vx, vy) = arrays()
    def pipeline(x, y):
        features = {"numbers": x[:, :4], "code": (x[:, 4:] > 0).astype("int32")}
        return tf.data.Dataset.from_tensor_slices((features, y)).batch(params["batch_size"])
    return pipeline(x, y).shuffle(8, seed=seed), pipeline(vx, vy)


def returns_one(params, seed):
    return arrays()[0]


def returns_text(params, seed):
    return "train.csv", "validation.csv"


def empty(params, seed):
    (x, y), val = arrays()
    return (x[:0], y[:0]), val


def unequal(params, seed):
    (x, y), val = arrays()
    return (x, y[:10]), val


def unbatched(params, seed):
    (x, y), (vx, vy) = arrays()
    ds = tf.data.Dataset.from_tensor_slices
    return ds((x, y)), ds((vx, vy))


def fails(params, seed):
    raise FileNotFoundError("no such file: sales.parquet")


def one_argument(params):
    return arrays()


def images(params, seed):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(48, 71, 71, 3)).astype("float32")
    y = rng.integers(0, 3, size=48)
    x[y == 1, :, :, 0] = 255.0  # a class the frozen features can tell apart
    return (x[:32], y[:32]), (x[32:], y[32:])


images.fingerprint = "random-images-v1"


def unmarked_images(params, seed):
    return images(params, seed)
"""

MODELS = """
import keras


def build_model(params, input_shape, num_outputs):
    inputs = keras.Input(input_shape)
    x = keras.layers.Dense(params["units"], activation=params["activation"])(inputs)
    x = keras.layers.Dropout(params["dropout"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_outputs)(x))


def build_fixed(params, input_shape, num_outputs):
    inputs = keras.Input((7,))
    return keras.Model(inputs, keras.layers.Dense(num_outputs)(inputs))


def build_two(params, input_shape, num_outputs):
    numbers = keras.Input(input_shape["numbers"], name="numbers")
    code = keras.Input(input_shape["code"], name="code", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(2, params["embedding"])(code))
    x = keras.layers.Concatenate()([numbers, embedded])
    x = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model([numbers, code], keras.layers.Dense(num_outputs)(x))
    model.compile(optimizer="adam", loss=keras.losses.Huber(), metrics=["mae"])
    return model
"""

SPEC = """
[study]
name = "{name}"
storage = "sqlite:///{name}.db"
[data]
recipe = "mydata.recipes:load"
batch_size = 16
[model]
recipe = "mydata.models:build_model"
[objective]
metric = "val_mae"
direction = "minimize"
[train]
epochs = 3
[search]
n_trials = 6
warm_start = [
    {{learning_rate = 1e-2, units = 16, activation = "relu", dropout = 0.0, optimizer = "adam"}},
]
[search.learning_rate]
low = 1e-3
high = 5e-2
log = true
[search.units]
low = 4
high = 32
log = true
[search.activation]
choices = ["relu", "tanh"]
[search.dropout]
low = 0.0
high = 0.4
step = 0.2
[search.optimizer]
choices = ["adam", "sgd"]
[pruner]
kind = "median"
n_startup_trials = 2
n_warmup_steps = 0
"""

# Loads the exported model with tuner and the user's package out of reach, and scores it.
PLAIN_KERAS = """
import json, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tuner", "mydata"):
            raise ImportError(f"{name} must not be needed")

sys.meta_path.insert(0, Refuse())
import keras, numpy as np
exec(sys.argv[2])
model = keras.saving.load_model(sys.argv[1])
_, (x, y) = arrays()
print(json.dumps({"mae": float(np.abs(model.predict(x, verbose=0)[:, 0] - y).mean())}))
"""

NAMES = {"learning_rate", "units", "activation", "dropout", "optimizer"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data-project")
    package = root / "mydata"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "generate.py").write_text(textwrap.dedent(DATA))
    (package / "recipes.py").write_text(textwrap.dedent(PACKAGE))
    (package / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "regression.toml").write_text(SPEC.format(name="regression"))
    return root


def _worker(project: Path, *args: str) -> str:
    done = run_tuner("worker", "--study", "regression.toml", *args, cwd=project, timeout=480)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def _study(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / name}.db")


def _export(project: Path, name: str, *args: str) -> dict:
    out = project / f"{name}-export"
    done = run_tuner(
        "export", "--study", "regression.toml", f"--set=study.name={name}",
        f"--set=study.storage=sqlite:///{name}.db", "--out", str(out / "best.json"),
        "--mkdir", *args, cwd=project, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((out / "best.json").read_text())


def _front(trials: list[FrozenTrial]) -> set[int]:
    """The complete trials that no other complete trial dominates (both values minimized)."""

    def dominates(a: list[float], b: list[float]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    beaten = {t.number for t in done for o in done if dominates(o.values, t.values)}
    return {t.number for t in done} - beaten


def test_a_users_regression_on_two_workers(project: Path) -> None:
    log = _worker(project, "--workers", "2")
    assert "[w0]" in log and "[w1]" in log
    assert (
        "feature cache off: recipe 'mydata.models:build_model' trains its whole network; "
        "data.recipe 'mydata.recipes:load' gives input shape (5,), 1 target value"
    ) in log
    assert "finished val_mae=" in log
    study = _study(project, "regression")
    trials = study.trials
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 6
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert all(set(t.params) == NAMES for t in trials)
    assert study.metric_names == ["val_mae"]
    for t in trials:  # the value is the last epoch's val_mae, as recorded per epoch
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.user_attrs["epoch_values"][-1])
    status = run_tuner("status", "--study", "regression.toml", cwd=project, timeout=120)
    assert status.returncode == 0 and "val_mae" in status.stdout
    assert "Feature cache off: recipe 'mydata.models:build_model' trains" in status.stdout
    result = _export(project, "regression", "--model", str(project / "best.keras"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: (t.value, t.number))
    assert result["best_trial"] == best.number and result["best_value"] == best.value
    assert result["metrics"] == ["val_mae"] and result["directions"] == ["minimize"]
    assert result["validation"]["val_mae"] == pytest.approx(best.value, rel=1e-4)
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS, str(project / "best.keras"), textwrap.dedent(DATA)],
        cwd=project.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    mae = json.loads(plain.stdout.strip().splitlines()[-1])["mae"]
    assert mae == pytest.approx(best.value, rel=1e-4)
    # A worker that would optimise another metric may not join the study.
    other = run_tuner(
        "worker", "--study", "regression.toml", "--set=objective.metric=val_loss",
        cwd=project, timeout=300,
    )  # fmt: skip
    assert other.returncode == 2
    assert "objective.metric=val_mae" in other.stderr
    assert "objective.metric=val_loss" in other.stderr
    assert len(_study(project, "regression").trials) == len(trials)


def test_two_inputs_from_a_tf_data_pipeline_and_the_users_compile(project: Path) -> None:
    log = _worker(
        project, "--n-trials", "2", "--set=study.name=two-inputs",
        "--set=study.storage=sqlite:///two-inputs.db",
        "--set=data.recipe=mydata.recipes:two_inputs",
        "--set=model.recipe=mydata.models:build_two",
        '--set=search={n_trials = 2, warm_start = [], learning_rate = {low = 1e-3, high = 1e-2},'
        " embedding = {choices = [1, 2]}, batch_size = {choices = [8, 32]}}",
    )  # fmt: skip
    assert "input shape {'numbers': (4,), 'code': (1,)}" in log
    line = "model.recipe 'mydata.models:build_two' compiles its own model (Adam, loss Huber)"
    assert log.count(line) == 1  # said once, not per trial
    trials = _study(project, "two-inputs").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(set(t.params) == {"learning_rate", "embedding", "batch_size"} for t in trials)


def test_two_objectives_show_their_pareto_front(project: Path) -> None:
    name = "two-objectives"
    _worker(
        project, "--n-trials", "6", f"--set=study.name={name}",
        f"--set=study.storage=sqlite:///{name}.db", '--set=objective.metrics=["val_mae", "gap"]',
    )  # fmt: skip
    study = _study(project, name)
    assert study.metric_names == ["val_mae", "gap"]
    trials = study.trials
    for t in trials:
        if t.state == TrialState.COMPLETE:  # gap: validation minus training mae, last epoch
            assert t.values[1] == pytest.approx(t.user_attrs["metric_gap"])
            assert t.values[0] == pytest.approx(t.user_attrs["epoch_values"][-1])
    front = _front(trials)
    result = _export(project, name, "--plots", str(project / "pareto-plots"))
    assert {t["trial"] for t in result["best_trials"]} == front
    for entry in result["best_trials"]:
        assert entry["values"] == list(trials[entry["trial"]].values)
        assert entry["params"] == trials[entry["trial"]].params
    firsts = [trials[n].values[0] for n in front]
    assert result["best_trial"] in front and result["best_value"] == min(firsts)
    assert (project / "pareto-plots" / "pareto_front.png").stat().st_size > 0
    status = run_tuner(
        "status", "--study", "regression.toml", f"--set=study.name={name}",
        f"--set=study.storage=sqlite:///{name}.db", cwd=project, timeout=120,
    )  # fmt: skip
    assert f"Pareto front: {len(front)} trial" in status.stdout


def test_the_constrained_form_prunes_and_exports_a_feasible_trial(project: Path) -> None:
    name = "within-gap"
    _worker(
        project, "--n-trials", "8", f"--set=study.name={name}",
        f"--set=study.storage=sqlite:///{name}.db", "--set=objective.max_gap=0.5",
        "--set=search.learning_rate.low=1e-4",
    )  # fmt: skip
    trials = _study(project, name).trials
    assert any(t.state == TrialState.PRUNED for t in trials)  # pruning stays on
    result = _export(project, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    within = [t for t in complete if t.user_attrs["metric_gap"] <= 0.5]
    assert result["max_gap"] == 0.5 and result["feasible"] is bool(within)
    best = min(within or complete, key=lambda t: (t.value, t.number))
    assert result["best_trial"] == best.number
    if within:
        assert trials[result["best_trial"]].user_attrs["metric_gap"] <= 0.5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["data.recipe=mydata.recipes:returns_one"], "as a bare ndarray; return two splits"),
        (["data.recipe=mydata.recipes:returns_text"], "returned training data as a str"),
        (["data.recipe=mydata.recipes:empty"], "returned training data with no rows"),
        (["data.recipe=mydata.recipes:unequal"], "differ in their number of rows (x has 180, y"),
        (["data.recipe=mydata.recipes:unbatched"], "as single examples, not batches"),
        (
            ["data.recipe=mydata.recipes:fails"],
            "failed to load the data: FileNotFoundError",
        ),
        (["data.recipe=mydata.recipes:one_argument"], "takes one_argument(params), but tuner"),
        (["data.recipe=mydata.recipes:missing"], "has no function 'missing'"),
        (["data.recipe=nothere.data:load"], "cannot import module nothere.data"),
        (["data.recipe=load.csv"], "must name a function of yours as module:function"),
        (["model.recipe=mydata.models:build_fixed"], "does not fit the model of model.recipe"),
        (["objective.metric=val_r2"], "is not a metric the model logs (it logs loss, mae"),
        (["model.recipe=xception-head"], "is a head on the frozen xception base, which takes"),
        (['search.optimizer.choices=["adam", "fast"]'], "search.optimizer must choose among"),
    ],
)
def test_broken_data_recipes_are_one_error_line(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, settings: list[str], message: str
) -> None:
    monkeypatch.chdir(project)
    name = "broken"
    code, _, err = cli(
        "worker", "--study", "regression.toml", f"--set=study.name={name}",
        f"--set=study.storage=sqlite:///{name}.db", *(f"--set={s}" for s in settings),
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    db = project / f"{name}.db"  # nothing left behind: no study with these settings
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


HEAD = [
    "--set=data.recipe=mydata.recipes:images", "--set=model.recipe=xception-head",
    "--set=model.weights=none", "--set=objective.metric=val_accuracy",
    "--set=objective.direction=maximize", "--set=search={n_trials = 2, warm_start = []}",
]  # fmt: skip


def test_a_head_on_a_data_recipes_images_uses_the_cache_by_its_fingerprint(
    project: Path, tmp_path: Path
) -> None:
    cache = f"--set=cache.dir={tmp_path / 'cache'}"
    first = _worker(
        project, *HEAD, cache, "--set=study.name=head", "--set=study.storage=sqlite:///head.db"
    )
    assert "computing frozen-base features once" in first
    again = _worker(
        project, *HEAD, cache, "--n-trials=3", "--set=study.name=head",
        "--set=study.storage=sqlite:///head.db",
    )  # fmt: skip
    assert "feature cache hit" in again
    trials = _study(project, "head").trials
    assert [t.user_attrs["cache"] for t in trials] == ["miss", "miss", "hit"]
    result = _export(project, "head", "--model", str(project / "head.keras"))
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert result["best_trial"] == best.number
    # the whole model (base and head, on images) scores what the head scored on the features
    assert result["validation"]["val_accuracy"] == pytest.approx(best.value, abs=1e-6)
    plain = _worker(
        project, *HEAD, cache, "--set=data.recipe=mydata.recipes:unmarked_images",
        "--set=study.name=unmarked", "--set=study.storage=sqlite:///unmarked.db",
    )  # fmt: skip
    assert "data.recipe 'mydata.recipes:unmarked_images' gives no fingerprint" in plain
    assert {t.user_attrs["cache"] for t in _study(project, "unmarked").trials} == {"off"}
