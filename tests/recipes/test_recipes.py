"""Recipes: the registry, user modules, the probe before trials, the bases, the kept weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest

from tuner.config.build import recipe_for, resolve_checked, trial_setup
from tuner.config.spec import load_spec
from tuner.errors import RecipeError, SpecError, WeightsError
from tuner.recipes import (
    BASES,
    BUILTIN,
    HEAD,
    MODEL,
    Params,
    UnknownHyperparameter,
    is_user_recipe,
    name_problem,
    resolve,
)
from tuner.training.probe import probe, probe_points

RECIPES = """
import keras


def build_head(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dense(params["units"], activation=params["activation"])(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def build_model(params, input_shape, num_classes, name="net"):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(params["filters"], 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


def no_model(params, feature_dim, num_classes):
    return "a model"


def too_many(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    return keras.Model(inputs, keras.layers.Dense(num_classes + 2)(inputs))


def unknown(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dense(params["unitz"])(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def conditional(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = inputs
    if params["activation"] == "tanh":  # units is read only on this branch
        x = keras.layers.Dense(params["units"], activation="tanh")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def wrong_input(params, input_shape, num_classes):
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(inputs))


def softmax(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dense(params["units"], activation=params["activation"])(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


class Twice(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def custom(params, feature_dim, num_classes):
    inputs = keras.Input((feature_dim,))
    x = Twice()(inputs)
    x = keras.layers.Dense(params["units"], activation=params["activation"])(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def wrong_name(params, size, num_classes):
    return None


def two(params, num_classes):
    return None


not_a_function = 3
"""

SPACE = """
[search.units]
low = 4
high = 32
[search.activation]
choices = ["relu", "tanh"]
[search.filters]
choices = [4, 8]
"""


def make_project(root: Path, body: str = RECIPES) -> str:
    """A user's package in ``root`` with a module of recipes; returns the module's name."""
    package = f"userpkg_{uuid.uuid4().hex[:8]}"  # fresh, as sys.modules caches imports
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "models.py").write_text(textwrap.dedent(body))
    return f"{package}.models"


def spec_in(folder: Path, recipe: str, *sets: str, space: str = SPACE):  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.toml"
    body = f'[data]\ndir = "d"\nimage_size = [32, 32]\n[model]\nrecipe = "{recipe}"\n'
    path.write_text(body + "[search]\nwarm_start = []\n" + space)
    return load_spec(str(path), [*sets])


# ---------------------------------------------------------------- the registry, no TensorFlow


def test_built_in_names_resolve_without_importing_anything() -> None:
    assert set(BUILTIN) == {"xception-head", "dense-head", "small-cnn"}
    assert resolve("xception-head").kind == HEAD and resolve("small-cnn").kind == MODEL
    assert name_problem("dense-head") is None and name_problem("pkg.mod:fn") is None
    problem = name_problem("resnet")
    assert problem is not None and "xception-head" in problem and "module:function" in problem


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a.b:c", True), ("mod:build", True), ("a.b:", False), (":f", False), ("a-b:c", False)],
)
def test_what_counts_as_module_function(name: str, ok: bool) -> None:
    assert is_user_recipe(name) is ok


def test_a_module_in_the_current_folder_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    module = make_project(project)
    monkeypatch.chdir(project)
    spec = spec_in(tmp_path / "elsewhere", f"{module}:build_head", "model.base=resnet50")
    recipe = resolve_checked(spec)
    assert recipe.kind == HEAD and recipe.name == f"{module}:build_head"
    assert recipe.base(spec.model.base) == BASES["resnet50"]
    assert recipe_for(spec) is recipe  # resolved once per process


def test_a_module_beside_the_spec_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    spec = spec_in(tmp_path / "project", f"{module}:build_model")
    recipe = resolve_checked(spec)
    assert recipe.kind == MODEL and recipe.base(spec.model.base) is None


@pytest.mark.parametrize(
    ("function", "needles"),
    [
        ("nope", ["has no function 'nope'", "build_head, build_model"]),
        ("not_a_function", ["names a int, not a function"]),
        ("wrong_name", ["wrong_name(params, size, num_classes)", "feature_dim or input_shape"]),
        ("two", ["two(params, num_classes)", "three arguments"]),
    ],
)
def test_functions_that_do_not_fit_are_refused(
    function: str, needles: list[str], tmp_path: Path
) -> None:
    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:{function}")
    with pytest.raises(RecipeError) as info:
        resolve_checked(spec)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("def f(:\n", ["SyntaxError", "line 1", "fix the module"]),
        ("import not_installed_anywhere\n", ["No module named 'not_installed_anywhere'"]),
        ("raise RuntimeError('at import')\n", ["RuntimeError: at import"]),
    ],
)
def test_a_module_that_fails_to_import_says_why(
    body: str, needles: list[str], tmp_path: Path
) -> None:
    module = make_project(tmp_path, body)
    with pytest.raises(RecipeError) as info:
        resolve_checked(spec_in(tmp_path, f"{module}:f"))
    assert module in str(info.value)
    for needle in needles:
        assert needle in str(info.value)


def test_a_missing_module_names_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        resolve_checked(spec_in(tmp_path / "specs", "nowhere_pkg.models:build_head"))
    message = str(info.value)
    assert "No module named 'nowhere_pkg'" in message
    assert str(tmp_path) in message and str(tmp_path / "specs") in message


def test_base_and_image_size_rules() -> None:
    assert {b.name: b.min_size for b in BASES.values()} == {
        "xception": 71, "efficientnetv2b0": 32, "mobilenetv3large": 32, "resnet50": 32,
    }  # fmt: skip
    load_spec("clothing", ["model.recipe=dense-head", "model.base=resnet50",
                           "data.image_size=[32, 32]"])  # fmt: skip
    cases = {
        ("data.image_size=[64, 64]",): "at least [71, 71] for xception-head on the xception",
        ("model.base=resnet50",): "use model.recipe=dense-head for another base",
        ("model.base=vgg16",): "model.base 'vgg16' is not one of: xception, efficientnetv2b0",
        ("search.size_inner.low=0.5", "search.size_inner.high=8.0"): "whole numbers >= 0",
        ("search.droprate.low=0.0", "search.droprate.high=1.0"): "must lie in [0, 1)",
        ("search.learning_rate.log=false", "search.learning_rate.low=0"): "must be positive",
    }
    for sets, needle in cases.items():
        with pytest.raises(SpecError, match=None) as info:
            load_spec("clothing", list(sets))
        assert needle in str(info.value) and "--set" in str(info.value)


def test_a_user_head_is_held_to_its_base_input_size(tmp_path: Path) -> None:
    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:build_head")  # 32x32 on the default xception base
    with pytest.raises(SpecError, match=r"at least \[71, 71\] for a head on the xception base"):
        resolve_checked(spec)
    resolve_checked(spec_in(tmp_path / "b", f"{module}:build_head", "model.base=resnet50"))


def test_built_in_recipes_warn_of_hyperparameters_they_never_read() -> None:
    spec = load_spec("clothing-head", ["search.momentum.low=0.5", "search.momentum.high=0.9"])
    warnings = probe(trial_setup(spec), recipe_for(spec), 10)
    assert len(warnings) == 1 and "momentum" in warnings[0] and "never reads" in warnings[0]
    assert (
        probe(trial_setup(load_spec("clothing-head")), recipe_for(load_spec("clothing-head")), 10)
        == []
    )


def test_probe_points_are_the_edges_of_the_space(tmp_path: Path) -> None:
    space = spec_in(tmp_path, "small-cnn").search.space
    assert probe_points(space) == [
        {"learning_rate": 1e-4, "units": 4, "activation": "relu", "filters": 4},
        {"learning_rate": 1e-1, "units": 32, "activation": "tanh", "filters": 8},
    ]


def test_params_say_which_names_a_recipe_read() -> None:
    params = Params({"units": 8, "droprate": 0.1})
    assert params["units"] == 8 and params.get("missing", 3) == 3
    assert params.read == {"units", "missing"}
    with pytest.raises(UnknownHyperparameter, match=r"'unitz'.*it has units, droprate"):
        params["unitz"]


def test_registry_imports_no_tensorflow() -> None:
    code = (
        "import sys, tuner.recipes, tuner.training.probe, tuner.config.spec\n"
        "import tuner.assets.weights\n"
        "from tuner.training.probe import probe\n"
        "from tuner.config.build import resolve_checked, trial_setup\n"
        "spec = tuner.config.spec.load_spec('clothing-head')\n"
        "probe(trial_setup(spec), resolve_checked(spec), 10)\n"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- the probe and the models (TF)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("function", "needles"),
    [
        ("no_model", ["returned a str, not a keras.Model"]),
        ("too_many", ["output has shape (None, 12)", "10 classes", "Dense(num_classes)"]),
        ("unknown", ["'unitz'", "does not define", "[search.unitz]"]),
        ("wrong_input", ["cannot take a batch of shape (None, 32, 32, 3)", "input_shape"]),
    ],
)
def test_probe_refuses_what_cannot_be_trained(
    function: str, needles: list[str], tmp_path: Path
) -> None:
    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:{function}", "model.base=resnet50")
    with pytest.raises(RecipeError) as info:
        probe(trial_setup(spec), resolve_checked(spec), 10)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("function", "needles"),
    [
        ("build_head", ["defines filters", "never reads"]),
        ("conditional", ["defines filters"]),  # units is read at the tanh edge
        ("softmax", ["softmax", "logits"]),
        ("custom", ["the class Twice", "tuner export --model will refuse"]),
    ],
)
def test_probe_warns_of_what_would_disappoint(
    function: str, needles: list[str], tmp_path: Path
) -> None:
    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:{function}", "model.base=resnet50")
    text = " | ".join(probe(trial_setup(spec), resolve_checked(spec), 10))
    for needle in needles:
        assert needle in text
    assert "units" not in text.split("never reads")[0].split("defines")[-1]


@pytest.mark.slow
def test_a_probed_recipe_is_not_probed_again_in_the_pool(tmp_path: Path) -> None:
    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:build_head", "model.base=resnet50")
    assert probe(trial_setup(spec), resolve_checked(spec), 10)  # the filters warning
    assert os.environ["TUNER_CHECKED_RECIPE"]
    assert probe(trial_setup(spec), resolve_checked(spec), 10) == []  # a child of the same pool


@pytest.mark.slow
@pytest.mark.parametrize("base", sorted(BASES))
def test_each_base_builds_at_its_smallest_size_and_pools_to_its_width(base: str) -> None:
    import keras

    from tuner.training.model import build_feature_extractor

    size = BASES[base].min_size
    sets = [f"model.base={base}", "model.weights=none", f"data.image_size=[{size}, {size}]"]
    spec = load_spec("clothing", ["model.recipe=dense-head", *sets])
    extractor = build_feature_extractor(trial_setup(spec))
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = extractor.predict(images, verbose=0)
    assert features.shape == (2, BASES[base].feature_dim)
    assert np.isfinite(features).all()
    again = build_feature_extractor(trial_setup(spec)).predict(
        images, verbose=0
    )  # the seeded random base
    np.testing.assert_allclose(features, again, atol=1e-5)
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("base", ["xception", "resnet50"])
def test_preprocessing_inside_the_model_matches_keras(base: str) -> None:
    import keras

    from tuner.training.model import _preprocess

    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inputs = keras.Input((32, 32, 3))
    ours = keras.Model(inputs, _preprocess(BASES[base], inputs)).predict(images, verbose=0)
    module = getattr(keras.applications, base if base == "xception" else "resnet50")
    np.testing.assert_allclose(ours, module.preprocess_input(images.copy()), atol=1e-3)


@pytest.mark.slow
def test_kept_weights_must_fit_the_rebuilt_model(tmp_path: Path) -> None:
    from tuner.training.model import assemble, load_trained_weights, save_trained_weights

    spec = load_spec("clothing-head", ["model.weights=none", "data.image_size=[71, 71]"])
    recipe = recipe_for(spec)
    point = {"learning_rate": 1e-3, "size_inner": 10, "droprate": 0.2}
    built = assemble(trial_setup(spec), recipe, Params(point), 10)
    assert [tuple(v.shape) for v in built.trained] == [(2048, 10), (10,), (10, 10), (10,)]
    save_trained_weights(built.trained, tmp_path / "w.npz")
    same = assemble(trial_setup(spec), recipe, Params(point), 10, extractor=built.model.layers[1])
    load_trained_weights(same.trained, tmp_path / "w.npz")
    other = assemble(
        trial_setup(spec), recipe, Params({**point, "size_inner": 100}), 10, built.model.layers[1]
    )
    with pytest.raises(WeightsError, match=r"\(2048, 10\) does not fit .*\(2048, 100\)"):
        load_trained_weights(other.trained, tmp_path / "w.npz", "trial 3's model")
    plain = assemble(
        trial_setup(spec), recipe, Params({**point, "size_inner": 0}), 10, built.model.layers[1]
    )
    with pytest.raises(WeightsError, match="hold 4 arrays, but trial 3's model has 2"):
        load_trained_weights(plain.trained, tmp_path / "w.npz", "trial 3's model")


@pytest.mark.slow
def test_a_whole_model_keeps_its_batch_norm_statistics(tmp_path: Path) -> None:
    from tuner.training.model import assemble

    module = make_project(tmp_path)
    spec = spec_in(tmp_path, f"{module}:build_model")
    built = assemble(trial_setup(spec), resolve_checked(spec), Params({"filters": 4}), 3)
    names = [v.path for v in built.trained]
    assert any("moving_mean" in n for n in names)  # not only the trainable weights
    assert len(built.trained) == len(built.part.weights)


@pytest.mark.slow
def test_portability_problems_name_what_needs_code() -> None:
    import keras

    from tuner.training.model import portability_problems

    def act(x):  # type: ignore[no-untyped-def]
        return keras.ops.relu(x)

    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, activation="relu")(inputs))
    assert portability_problems(plain) == []
    odd = keras.Model(inputs, keras.layers.Lambda(lambda t: t)(keras.layers.Dense(2, act)(inputs)))
    assert portability_problems(odd) == ["the Python function 'act'", "a Lambda layer"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "own-model"


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "size"), [("head.toml", 71), ("network.toml", 32)])
def test_the_shipped_examples_run_from_anywhere(
    spec: str, size: int, tmp_path: Path, tiny_data: Path
) -> None:
    """Started outside the example's folder, its package is found beside the spec."""
    from tests.conftest import run_tuner

    sets = {
        "data.dir": tiny_data,
        "model.weights": "none",
        "train.epochs": 1,
        "data.image_size": f"[{size}, {size}]",
        "data.batch_size": 8,
        "cache.dir": tmp_path / "cache",
    }
    done = run_tuner(
        "worker", "--study", str(EXAMPLES / spec), "--storage", f"sqlite:///{tmp_path}/s.db",
        "--n-trials", "2", *(f"--set={k}={v}" for k, v in sets.items()), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "never reads" not in done.stderr  # every hyperparameter is read
    name = load_spec(str(EXAMPLES / spec)).study.name
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/s.db").trials
    space = set(load_spec(str(EXAMPLES / spec)).search.space)
    assert len(trials) == 2 and all(set(t.params) == space for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
