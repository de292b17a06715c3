"""Who compiles the model: tuner (with the trial's optimizer), or the user's recipe.

A whole-model recipe on image folders that compiles itself keeps its own loss
and metrics (its metric can be the objective: the probe finds what it logs),
and tuner sets only the learning rate. ``search.optimizer`` chooses the
optimizer of a model tuner compiles, the cached head included.
"""

from __future__ import annotations

import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import Cli, Env

pytestmark = pytest.mark.slow

RECIPES = """
import keras

def build_model(params, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    model.compile(
        optimizer=keras.optimizers.SGD(momentum=0.5),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )
    return model
"""


def _study(env: Env, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=env.url)


def test_a_compiled_recipe_keeps_its_compile_and_its_metric_is_the_objective(
    env: Env, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    (env.root / "compiled_recipes.py").write_text(textwrap.dedent(RECIPES))
    monkeypatch.chdir(env.root)
    monkeypatch.syspath_prepend(str(env.root))
    sets = [
        "--set=model.recipe=compiled_recipes:build_model", "--set=objective.metric=val_auc",
        "--set=study.name=compiled", "--set=search.warm_start=[]",
    ]  # fmt: skip
    code, _, err = cli("worker", "--study", "clothing", "--storage", env.url, "--n-trials", "2",
                       *env.overrides(epochs=2), *sets)  # fmt: skip
    assert code == 0, err
    assert "compiles its own model (SGD, loss CategoricalCrossentropy)" in err
    assert "finished val_auc=" in err
    trials = _study(env, "compiled").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # the objective is the compiled AUC, not accuracy
        assert t.value == pytest.approx(t.user_attrs["epoch_values"][-1])
        assert 0.0 <= t.value <= 1.0
    code, _, err = cli("worker", "--study", "clothing", "--storage", env.url, "--n-trials", "1",
                       *env.overrides(epochs=2), *sets[:1], "--set=objective.metric=val_f1",
                       "--set=study.name=other")  # fmt: skip
    assert code == 2
    assert "objective.metric 'val_f1' is not a metric the model logs (it logs" in err
    assert "val_auc" in err.splitlines()[-1]
    sys.modules.pop("compiled_recipes", None)


def test_the_optimizer_is_a_hyperparameter_of_the_cached_head(env: Env, cli: Cli) -> None:
    sets = [
        "--set=study.name=optimizers", '--set=search.optimizer.choices=["sgd", "adamw"]',
        '--set=search.warm_start=[{learning_rate = 1e-2, optimizer = "sgd"},'
        ' {learning_rate = 1e-2, optimizer = "adamw"}]',
    ]  # fmt: skip
    code, _, err = cli("worker", "--study", "clothing", "--storage", env.url, "--n-trials", "2",
                       *env.overrides(epochs=2), *sets)  # fmt: skip
    assert code == 0, err
    trials = _study(env, "optimizers").trials
    assert [t.params["optimizer"] for t in trials] == ["sgd", "adamw"]
    assert {t.user_attrs["cache"] for t in trials} <= {"hit", "miss"}
    assert "never reads" not in err  # tuner itself reads search.optimizer
