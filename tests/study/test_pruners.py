"""Pruners built from the spec, and the clothing-scratch study end to end.

Every test but the last runs without TensorFlow: the pruners are plain Optuna
objects, checked by their settings and by the decisions they take on
hand-made trials in an in-memory study.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.pruners import (
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.trial import TrialState

from tests.conftest import Env, run_tuner
from tuner.config.build import trial_setup
from tuner.config.spec import PRUNER_KINDS, load_spec
from tuner.errors import SpecError
from tuner.study.pruners import CompletedTrialsSnapshot, build_pruner, pruner_name, study_pruner

CLASSES = {
    "none": NopPruner,
    "median": MedianPruner,
    "percentile": PercentilePruner,
    "hyperband": HyperbandPruner,
    "patient": PatientPruner,
    "successive-halving": SuccessiveHalvingPruner,
}
# Settings unlike every default, so that a setting that is dropped shows.
SETTINGS = [
    "pruner.n_startup_trials=7",
    "pruner.n_warmup_steps=3",
    "pruner.percentile=40",
    "pruner.patience=5",
    "pruner.min_resource=2",
    "pruner.reduction_factor=4",
    "train.epochs=9",
]


def pruner_for(kind: str, *extra: str) -> optuna.pruners.BasePruner:
    return build_pruner(
        load_spec("clothing-scratch", [*SETTINGS, f"pruner.kind={kind}", *extra]).pruner,
        load_spec("clothing-scratch", [*SETTINGS, f"pruner.kind={kind}", *extra]).train.epochs,
    )


def test_every_kind_has_a_builder() -> None:
    assert set(CLASSES) == set(PRUNER_KINDS)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_each_kind_builds_its_optuna_class(kind: str) -> None:
    assert type(pruner_for(kind)) is CLASSES[kind]


@pytest.mark.parametrize("kind", ["median", "percentile"])
def test_median_and_percentile_take_startup_and_warmup(kind: str) -> None:
    pruner = pruner_for(kind)
    assert isinstance(pruner, PercentilePruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (7, 3)
    assert pruner._percentile == (50.0 if kind == "median" else 40.0)


def test_patient_wraps_a_median_pruner_with_the_spec_settings() -> None:
    pruner = pruner_for("patient")
    assert isinstance(pruner, PatientPruner)
    assert pruner._patience == 5
    inner = pruner._wrapped_pruner
    assert type(inner) is MedianPruner
    assert (inner._n_startup_trials, inner._n_warmup_steps) == (7, 3)


def test_hyperband_spans_min_resource_to_the_epochs_of_a_trial() -> None:
    pruner = pruner_for("hyperband")
    assert isinstance(pruner, HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 9, 4)


def test_successive_halving_takes_min_resource_and_reduction_factor() -> None:
    pruner = pruner_for("successive-halving")
    assert isinstance(pruner, SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (2, 4)


def test_a_bad_kind_is_a_spec_error_naming_the_key_and_the_kinds() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clothing-scratch", ["pruner.kind=sometimes"])
    message = str(info.value)
    assert "clothing-scratch.toml" in message
    assert "pruner.kind" in message and "'sometimes'" in message
    assert all(kind in message for kind in PRUNER_KINDS)


def test_build_pruner_rejects_a_bad_kind_that_skipped_validation() -> None:
    spec = load_spec("clothing-scratch")
    bad = dataclasses.replace(spec, pruner=dataclasses.replace(spec.pruner, kind="sometimes"))
    with pytest.raises(SpecError, match=r"pruner\.kind 'sometimes'.*median.*hyperband"):
        build_pruner(bad.pruner, bad.train.epochs)


def _study_with_curves(
    pruner: optuna.pruners.BasePruner, curves: list[list[float]]
) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in curves:
        study.add_trial(
            optuna.trial.create_trial(
                value=curve[-1],
                intermediate_values=dict(enumerate(curve)),
                state=TrialState.COMPLETE,
            )
        )
    return study


def _pruned_at(study: optuna.Study, curve: list[float]) -> int | None:
    """The step at which a trial reporting ``curve`` would be pruned, or None."""
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
        if trial.should_prune():
            return step
    return None


def test_median_decisions_follow_startup_and_warmup() -> None:
    good = [0.3, 0.4, 0.5, 0.6]
    poor = [0.2, 0.2, 0.2, 0.2]
    pruner = pruner_for("median", "pruner.n_startup_trials=2", "pruner.n_warmup_steps=1")
    # One finished trial is below n_startup_trials: nothing is pruned yet.
    assert _pruned_at(_study_with_curves(pruner, [good]), poor) is None
    # Two are enough; the warm-up spares step 0, step 1 is the first that may prune.
    assert _pruned_at(_study_with_curves(pruner, [good, good]), poor) == 1
    # A trial at least as good as the median runs to the end.
    assert _pruned_at(_study_with_curves(pruner, [good, poor]), good) is None


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_only_pruners_that_read_completed_trials_alone_get_a_snapshot(kind: str) -> None:
    spec = load_spec("clothing-scratch", [*SETTINGS, f"pruner.kind={kind}"])
    pruner = study_pruner(spec.pruner, spec.train.epochs)
    wrapped = kind in ("median", "percentile", "patient")
    assert isinstance(pruner, CompletedTrialsSnapshot) is wrapped
    inner = pruner.pruner if isinstance(pruner, CompletedTrialsSnapshot) else pruner
    assert type(inner) is CLASSES[kind]
    assert pruner_name(pruner) == CLASSES[kind].__name__  # what `pruned by ...` names


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _CountingStudy:
    """Forwards to a study and counts its reads of the trial list."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.reads = study, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.study, name)

    def get_trials(self, deepcopy: bool = True, states: object = None) -> list:
        self.reads += 1
        return self.study.get_trials(deepcopy=deepcopy, states=states)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["median", "percentile", "patient"])
def test_a_snapshot_decides_as_the_optuna_pruner_does(kind: str) -> None:
    rising = [0.1 * step for step in range(8)]
    curves = [rising, [v + 0.05 for v in rising], [0.5] * 8, [0.2] * 8, [0.9, *[0.1] * 7]]
    extra = ["pruner.n_startup_trials=2", "pruner.n_warmup_steps=1", "pruner.patience=1"]
    plain = pruner_for(kind, *extra)
    candidates = [*curves, [v - 0.01 for v in rising], [0.35] * 8, [0.05, *[0.0] * 7]]
    outcomes = set()
    for candidate in candidates:
        snapshot = CompletedTrialsSnapshot(pruner_for(kind, *extra), clock=_Clock())
        expected = _pruned_at(_study_with_curves(plain, curves), candidate)
        assert _pruned_at(_study_with_curves(snapshot, curves), candidate) == expected
        outcomes.add(expected)
    # the cases above must include both decisions, or the comparison proves little
    assert None in outcomes and len(outcomes) > 1


def _median_snapshot(clock: _Clock) -> CompletedTrialsSnapshot:
    return CompletedTrialsSnapshot(
        pruner_for("median", "pruner.n_startup_trials=2", "pruner.n_warmup_steps=1"),
        refresh=5.0,
        clock=clock,
    )


def test_a_snapshot_reads_once_per_trial_and_again_after_refresh() -> None:
    clock = _Clock()
    good = [0.3, 0.4, 0.5, 0.6]
    snapshot = _median_snapshot(clock)
    study = _study_with_curves(snapshot, [good])
    counting = _CountingStudy(study)
    trial = study.ask()

    def check(step: int, value: float) -> bool:
        trial.report(value, step)
        return snapshot.prune(counting, study._storage.get_trial(trial._trial_id))  # type: ignore[arg-type]

    assert not check(0, 0.2) and counting.reads == 1  # a trial's first check reads
    # a second trial completes elsewhere; within the refresh time it is not read again
    study.add_trial(
        optuna.trial.create_trial(
            value=0.6, intermediate_values=dict(enumerate(good)), state=TrialState.COMPLETE
        )
    )
    clock.now = 4.9
    assert not check(1, 0.2) and counting.reads == 1  # one completed trial: below startup
    clock.now = 5.0
    assert check(2, 0.2) and counting.reads == 2  # read again: two completed, poor is pruned
    # the next trial reads afresh at once, whatever the clock says
    next_trial = study.ask()
    next_trial.report(0.2, 0)
    snapshot.prune(counting, study._storage.get_trial(next_trial._trial_id))  # type: ignore[arg-type]
    assert counting.reads == 3


def test_none_never_prunes() -> None:
    study = _study_with_curves(pruner_for("none"), [[0.9, 0.9, 0.9]] * 5)
    assert _pruned_at(study, [0.0, 0.0, 0.0]) is None


def test_pruners_do_not_import_tensorflow() -> None:
    code = (
        "import sys, tuner.study.pruners, tuner.config.spec; "
        "[tuner.study.pruners.build_pruner(tuner.config.spec.load_spec('clothing-scratch', "
        "[f'pruner.kind={k}']).pruner, 10) for k in tuner.config.spec.PRUNER_KINDS]; "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.slow
def test_clothing_scratch_worker_learns_end_to_end(env: Env) -> None:
    sets = env.overrides(epochs=1, **{"data.image_size": "[64, 64]"})
    done = run_tuner(
        "worker", "--study", "clothing-scratch", "--storage", env.url, "--n-trials", "3", *sets,
        cwd=env.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recipe 'small-cnn' trains its whole network" in done.stderr  # why no cache
    study = optuna.load_study(study_name="clothing-scratch", storage=env.url)
    trials = [t for t in study.get_trials() if t.state.is_finished()]
    assert [t.params["learning_rate"] for t in trials] == [1e-4, 1e-3, 1e-2]  # warm start
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.intermediate_values == {0: t.value}
        attrs = t.user_attrs
        assert len(attrs["train_accuracy"]) == len(attrs["val_loss"]) == 1
        assert len(attrs["epoch_seconds"]) == 1 and attrs["epoch_seconds"][0] > 0
        assert attrs["gap"] == pytest.approx(attrs["train_accuracy"][0] - t.value)
        assert attrs["cache"] == "off"
        host, _, pid = attrs["worker"].rpartition(":")
        assert host and pid.isdigit()
    assert not Path(env.root, "clothing-scratch.db").exists()  # --storage was used


class _PruneTrialZero(optuna.pruners.BasePruner):
    """Stops trial 0 after its first epoch, whatever it reports."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 0


@pytest.mark.slow
def test_a_trial_does_not_depend_on_how_long_earlier_trials_ran(env: Env) -> None:
    """Pruning one trial leaves the next one's curve unchanged, so pruners compare pairwise."""
    from tuner.runner.startup import ensure_dataset
    from tuner.training.objective import make_objective, prepare_data

    sets = [s.removeprefix("--set=") for s in env.overrides(epochs=2)]
    spec = load_spec("clothing-scratch", [*sets, "data.image_size=[32, 32]"])
    data = prepare_data(trial_setup(spec), ensure_dataset(spec), say=lambda _: None)
    losses = []
    for pruner in (NopPruner(), _PruneTrialZero()):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for rate in (1e-2, 1e-3):
            study.enqueue_trial({"learning_rate": rate})
        study.optimize(
            make_objective(trial_setup(spec), data, None, say=lambda _: None), n_trials=2
        )
        assert len(study.trials[0].intermediate_values) == (2 if not losses else 1)
        losses.append(study.trials[1].user_attrs["val_loss"])
    assert losses[0] == losses[1]


def test_a_snapshot_fed_the_loops_read_adds_new_completed_trials_without_a_read() -> None:
    clock = _Clock()
    good = [0.3, 0.4, 0.5, 0.6]
    snapshot = _median_snapshot(clock)
    study = _study_with_curves(snapshot, [good])  # one completed trial: below startup
    counting = _CountingStudy(study)
    snapshot.seen(study.get_trials(deepcopy=False))  # the loop's read, before a claim
    first = study.ask()
    first.report(0.2, 1)
    assert not snapshot.prune(counting, study._storage.get_trial(first._trial_id))  # type: ignore[arg-type]
    assert counting.reads == 0  # the loop's read served the trial's first check
    study.tell(first, 0.2)
    study.add_trial(
        optuna.trial.create_trial(
            value=0.6, intermediate_values=dict(enumerate(good)), state=TrialState.COMPLETE
        )
    )
    snapshot.seen(study.get_trials(deepcopy=False))  # the two completed since are added once
    snapshot.seen(study.get_trials(deepcopy=False))
    assert sorted(t.number for t in snapshot._completed) == [0, 1, 2]
    second = study.ask()
    second.report(0.1, 1)
    assert snapshot.prune(counting, study._storage.get_trial(second._trial_id))  # type: ignore[arg-type]
    assert counting.reads == 0
