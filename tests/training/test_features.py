"""The frozen-feature cache: key, atomic shared entries, equivalence, switch and fallback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import Env, run_tuner
from tuner.assets.datasets import DatasetScan, load_split, scan_dataset
from tuner.config.build import recipe_for, trial_setup
from tuner.config.spec import StudySpec, load_spec
from tuner.errors import CacheError
from tuner.recipes import BASES, Params
from tuner.training import features
from tuner.training.model import (
    assemble,
    build_feature_extractor,
    build_part,
    compile_model,
    load_trained_weights,
    save_trained_weights,
)
from tuner.training.settings import TrialSetup

SPLITS = ("train", "validation")


def _spec(env: Env, **extra: object) -> StudySpec:
    return load_spec("clothing", [s.removeprefix("--set=") for s in env.overrides(**extra)])


def _setup(env: Env, **extra: object) -> TrialSetup:
    return trial_setup(_spec(env, **extra))


def _entry(spec: StudySpec) -> Path:
    scan = scan_dataset(spec.data.dir)
    return (
        features.cache_dir(trial_setup(spec))
        / "features"
        / features.cache_key(trial_setup(spec), scan.fingerprint())
    )


def _fake_extraction(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the base by deterministic arrays; returns the splits extracted, in order."""
    calls: list[str] = []

    def extract(
        _extractor: object, scan: DatasetScan, split: str, _spec: StudySpec, _progress: object
    ) -> tuple[np.ndarray, np.ndarray]:
        calls.append(split)
        n, k = scan.count(split), len(scan.class_names)
        x = np.random.default_rng(len(split)).random((n, 2048), dtype=np.float32)
        return x, np.eye(k, dtype=np.float32)[np.arange(n) % k]

    monkeypatch.setattr(features, "build_feature_extractor", lambda _spec: object())
    monkeypatch.setattr(features, "extract_features", extract)
    return calls


# (a) The key changes with each of its components.


def test_key_is_stable_for_the_same_inputs(env: Env) -> None:
    spec = _spec(env)
    assert features.cache_key(trial_setup(spec), "abc") == features.cache_key(_setup(env), "abc")


def test_key_changes_with_dataset_file_content(env: Env, tmp_path: Path) -> None:
    copy = shutil.copytree(env.data, tmp_path / "copy")
    spec = _spec(env, **{"data.dir": str(copy)})
    before = features.cache_key(trial_setup(spec), scan_dataset(copy).fingerprint())
    images = sorted((copy / "train").rglob("*.jp*g"))
    shutil.copy(images[1], images[0])  # same file name, other content
    assert features.cache_key(trial_setup(spec), scan_dataset(copy).fingerprint()) != before


def test_key_changes_with_base_model(env: Env) -> None:
    heads = {"model.recipe": "dense-head"}
    keys = {
        features.cache_key(_setup(env, **heads, **{"model.base": base}), "d") for base in BASES
    }
    assert len(keys) == len(BASES)
    # The head does not matter: every head recipe on a base shares its features.
    assert features.cache_key(_setup(env, **heads), "d") == features.cache_key(_setup(env), "d")


def test_key_changes_with_weights_identity(env: Env, tmp_path: Path) -> None:
    weights_file = tmp_path / "xception.weights.h5"
    weights_file.write_bytes(b"first weights")
    key_file = features.cache_key(_setup(env, **{"model.weights": str(weights_file)}), "d")
    weights_file.write_bytes(b"other weights")  # same path, other content
    keys = {
        features.cache_key(_setup(env, **{"model.weights": "imagenet"}), "d"),
        features.cache_key(_setup(env, **{"model.weights": "none"}), "d"),
        key_file,
        features.cache_key(_setup(env, **{"model.weights": str(weights_file)}), "d"),
    }
    assert len(keys) == 4


def test_key_changes_with_input_size(env: Env) -> None:
    small = features.cache_key(_setup(env, **{"data.image_size": "[71, 71]"}), "d")
    assert features.cache_key(_setup(env, **{"data.image_size": "[150, 150]"}), "d") != small


def test_key_changes_with_preprocessing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    before = features.cache_key(_setup(env), "d")
    other = dataclasses.replace(BASES["xception"], preprocessing="x/255, bilinear resize")
    monkeypatch.setitem(BASES, "xception", other)
    assert features.cache_key(_setup(env), "d") != before


def test_key_changes_with_keras_version(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    before = features.cache_key(_setup(env), "d")
    monkeypatch.setattr(keras, "__version__", "3.0.0")
    assert features.cache_key(_setup(env), "d") != before


def test_cache_dir_precedence(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert features.cache_dir(_setup(env)) == env.cache
    assert features.cache_dir(_setup(env, **{"cache.dir": ""})) == tmp_path / "env"
    monkeypatch.delenv("TUNER_CACHE_DIR")
    assert features.cache_dir(_setup(env, **{"cache.dir": ""})) == tmp_path / "xdg" / "tuner"


# (b) A failed or damaged entry is never read; it is computed again.


def test_write_failing_halfway_leaves_no_entry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, scan = _spec(env), scan_dataset(env.data)
    calls = _fake_extraction(monkeypatch)
    real_write = features._write_atomic

    def disk_full_on_second_split(path: Path, write: object) -> None:
        if path.name != "validation.npz":
            return real_write(path, write)

        def half(f: BinaryIO) -> None:
            f.write(b"PK\x03\x04 half an archive")
            raise OSError(28, "No space left on device")

        return real_write(path, half)

    monkeypatch.setattr(features, "_write_atomic", disk_full_on_second_split)
    with pytest.raises(CacheError, match="No space left on device"):
        features.load_or_compute(trial_setup(spec), scan)
    entry = _entry(spec)
    assert (entry / "train.npz").is_file()
    assert not (entry / "meta.json").exists()
    assert not list(entry.glob(".*.tmp")) and not (entry / "validation.npz").exists()
    assert features._read_entry(entry, SPLITS, entry.name) is None

    monkeypatch.setattr(features, "_write_atomic", real_write)
    fs = features.load_or_compute(trial_setup(spec), scan)
    assert fs.status == "miss"
    assert calls == ["train", "validation", "train", "validation"]
    assert features.load_or_compute(trial_setup(spec), scan).status == "hit"


@pytest.mark.slow  # TensorFlow
@pytest.mark.parametrize("damage", ["truncate", "flip-bytes", "garbage", "drop-meta", "bad-meta"])
def test_damaged_entry_is_recomputed(
    env: Env, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    spec, scan = _spec(env), scan_dataset(env.data)
    calls = _fake_extraction(monkeypatch)
    good = features.load_or_compute(trial_setup(spec), scan)
    entry = _entry(spec)
    npz = entry / "train.npz"
    data = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(data[: len(data) // 2])
    elif damage == "flip-bytes":  # still a zip, but the CRC no longer matches
        middle = len(data) // 2
        npz.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]))
    elif damage == "garbage":
        npz.write_bytes(b"not an archive at all")
    elif damage == "drop-meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text('{"key": "')
    again = features.load_or_compute(trial_setup(spec), scan)
    assert again.status == "miss"
    assert calls == ["train", "validation"] * 2
    np.testing.assert_array_equal(again.features["train"], good.features["train"])
    assert features.load_or_compute(trial_setup(spec), scan).status == "hit"


KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from tuner.training import features
from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec

flag = Path(sys.argv[1])
spec = load_spec("clothing", sys.argv[2:])
def extract(_e, scan, split, _s, _p):
    return np.zeros((scan.count(split), 2048), np.float32), np.zeros((scan.count(split), 10))
def stuck_savez(f, **arrays):
    f.write(b"PK\\x03\\x04 a partial archive")
    f.flush()
    flag.touch()
    time.sleep(600)
features.build_feature_extractor = lambda _spec: object()
features.extract_features = extract
np.savez = stuck_savez
features.load_or_compute(trial_setup(spec), scan_dataset(spec.data.dir))
"""


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_no_entry(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = _spec(env)
    flag = tmp_path / "writing"
    sets = [s.removeprefix("--set=") for s in env.overrides()]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(flag), *sets])
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), "the writer never started writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    entry = _entry(spec)
    assert list(entry.glob(".train.npz.*.tmp")), "the kill should leave a partial temporary file"
    assert not (entry / "train.npz").exists() and not (entry / "meta.json").exists()

    calls = _fake_extraction(monkeypatch)
    fs = features.load_or_compute(
        trial_setup(spec), scan_dataset(env.data)
    )  # the dead writer's lock is free
    assert fs.status == "miss" and calls == list(SPLITS)
    assert not list(entry.glob(".*.tmp"))
    assert json.loads((entry / "meta.json").read_text())["key"] == entry.name


# (c) Two processes want the same entry: one computes, the other waits for it.

RACER = """
import json, sys, time
from pathlib import Path
from tuner.assets.datasets import scan_dataset
from tuner.training.features import load_or_compute
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec

barrier, me = Path(sys.argv[1]), sys.argv[2]
spec = load_spec("clothing", sys.argv[3:])
scan = scan_dataset(spec.data.dir)
(barrier / f"ready-{me}").touch()
while len(list(barrier.glob("ready-*"))) < 2:
    time.sleep(0.02)
start = time.time()
fs = load_or_compute(trial_setup(spec), scan)
print(json.dumps({"status": fs.status, "start": start, "end": time.time()}))
"""


@pytest.mark.slow
def test_two_processes_compute_an_entry_once(env: Env, tmp_path: Path) -> None:
    sets = [s.removeprefix("--set=") for s in env.overrides()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(i), *sets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err for _, err in outs)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["status"] for r in results) == ["hit", "miss"]
    miss, hit = sorted(results, key=lambda r: r["status"] != "miss")
    # Both asked at once; the hit could only finish after the miss had written the entry.
    assert abs(hit["start"] - miss["start"]) < 1.0
    written = (_entry(_spec(env)) / "meta.json").stat().st_mtime
    assert hit["end"] >= written - 0.01 > hit["start"]


# (d) The head trained on cached features is the full model's head.


@pytest.mark.slow
def test_cached_head_on_the_base_gives_the_same_logits(env: Env, tmp_path: Path) -> None:
    # float32 features: the exported model's base is float32 (bfloat16 ones are ~1% off)
    spec, scan = _spec(env, **{"model.precision": "float32"}), scan_dataset(env.data)
    seen: list[tuple[str, int, int]] = []
    fs = features.load_or_compute(trial_setup(spec), scan, progress=lambda *a: seen.append(a))
    for split in ("train", "validation"):  # progress per batch of 8, ending at the split's size
        counts = [done for part, done, total in seen if part == split and total == len(
            fs.labels[split])]  # fmt: skip
        assert counts == sorted(counts) and counts[-1] == len(fs.labels[split])
        assert len(counts) == -(-len(fs.labels[split]) // 8)
    keras.utils.set_random_seed(7)
    point = Params({"learning_rate": 1e-2, "size_inner": 16, "droprate": 0.5})
    recipe = recipe_for(spec)
    head = build_part(recipe, point, 2048, len(scan.class_names))
    compile_model(head, 1e-2)
    head.fit(fs.features["train"], fs.labels["train"], epochs=2, batch_size=8, verbose=0)
    save_trained_weights(head.weights, tmp_path / "head.npz")
    expected = head.predict(fs.features["validation"], verbose=0)
    images = np.concatenate([x for x, _ in load_split(scan, "validation", (71, 71), 8)])

    keras.backend.clear_session()  # a separately built base, as in another worker
    full = assemble(trial_setup(spec), recipe, point, len(scan.class_names))
    load_trained_weights(full.trained, tmp_path / "head.npz")
    np.testing.assert_allclose(full.model.predict(images, verbose=0), expected, atol=1e-4)
    # Training mode: the frozen base still runs in inference mode; only Dropout would differ.
    no_dropout = assemble(
        trial_setup(spec), recipe, {**point, "droprate": 0.0}, len(scan.class_names)
    )
    load_trained_weights(no_dropout.trained, tmp_path / "head.npz")
    np.testing.assert_allclose(no_dropout.model(images, training=True), expected, atol=1e-4)

    # The seeded random base is the same function in every build.
    first = build_feature_extractor(trial_setup(spec)).predict(images, verbose=0)
    second = build_feature_extractor(trial_setup(spec)).predict(images, verbose=0)
    np.testing.assert_allclose(first, second, atol=1e-6)
    np.testing.assert_allclose(first, fs.features["validation"], atol=1e-5)


# (e) The switch and the fallback.


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"cache.enabled": "false"}, "cache.enabled is false"),
        ({"data.augment": "true"}, "data.augment is on"),
        ({"model.trainable_base": "true"}, "model.trainable_base is true"),
        ({"model.recipe": "small-cnn"}, "recipe 'small-cnn'"),
    ],
)
def test_cache_reason_names_why_the_cache_cannot_apply(
    env: Env, setting: dict[str, str], reason: str
) -> None:
    assert features.cache_reason(_setup(env)) is None
    assert reason in (features.cache_reason(_setup(env, **setting)) or "")
    assert features.cache_reason(_setup(env, **setting), recipe_for(_spec(env, **setting))) == (
        features.cache_reason(_setup(env, **setting))
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting", [{"data.augment": "true"}, {"model.trainable_base": "true"}], ids=str
)
def test_fallback_runs_the_full_pipeline_and_says_why(env: Env, setting: dict[str, str]) -> None:
    from tuner.training.objective import prepare_data

    spec, lines = _spec(env, **setting), []
    data = prepare_data(trial_setup(spec), scan_dataset(env.data), lines.append)
    assert data.cache == "off" and data.features is None and data.val_ds is not None
    reason = features.cache_reason(trial_setup(spec))
    assert lines == [f"feature cache off: {reason}; running the full pipeline"]
    assert not env.cache.exists()


def _trials(env: Env) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="clothing", storage=env.url).get_trials()


@pytest.mark.slow
def test_cache_disabled_worker_runs_the_full_pipeline(env: Env) -> None:
    args = ["--storage", env.url, "--n-trials", "1"]
    result = run_tuner(
        "worker", "--study", "clothing", *args, *env.overrides(**{"cache.enabled": "false"})
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "feature cache off: cache.enabled is false; running the full pipeline" in log
    # The warm-start rates wait in the queue; one of them ran.
    [trial] = [t for t in _trials(env) if t.state != TrialState.WAITING]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["cache"] == "off"
    assert not env.cache.exists()


# (f) A second worker run finds every feature in the cache.


@pytest.mark.slow
def test_second_worker_run_hits_the_cache_for_every_trial(env: Env) -> None:
    def worker(n_trials: int) -> str:
        args = ["--storage", env.url, "--n-trials", str(n_trials), *env.overrides()]
        result = run_tuner("worker", "--study", "clothing", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    first_log = worker(2)
    second_log = worker(4)
    assert "computing frozen-base features once" in first_log
    assert "computing frozen-base features once" not in second_log
    assert "feature cache hit" in second_log
    trials = _trials(env)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    first, second = trials[:2], trials[2:]
    assert {t.user_attrs["cache"] for t in first} == {"miss"}
    assert [t.user_attrs["cache"] for t in second] == ["hit", "hit"]
    assert {t.user_attrs["worker"] for t in first}.isdisjoint(
        t.user_attrs["worker"] for t in second
    )


@pytest.mark.slow  # TensorFlow, and an extraction process
def test_a_pool_workers_extraction_runs_with_every_core_and_falls_back_here(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with a share of the cores extracts in a process with all of them; if that
    process fails, the worker extracts itself, and the entry is the same."""
    spec = _spec(env)
    scan = scan_dataset(spec.data.dir)
    monkeypatch.setattr(features, "_spare_threads", lambda: 2)
    seen: list[tuple[str, int, int]] = []
    fs = features.load_or_compute(trial_setup(spec), scan, progress=lambda *a: seen.append(a))
    assert fs.status == "miss" and seen[-1] == ("validation", 20, 20)  # the child's progress
    child = fs.features["train"]
    shutil.rmtree(_entry(spec))
    failing = ([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
               dict(os.environ))  # fmt: skip
    monkeypatch.setattr(features, "extraction_process", lambda job, threads: failing)
    here = features.load_or_compute(trial_setup(spec), scan)
    assert here.status == "miss"
    np.testing.assert_allclose(here.features["train"], child, rtol=1e-4, atol=1e-5)
    assert not list(_entry(spec).parent.glob(".*job-*")) and not list(
        _entry(spec).parent.glob(".*stderr-*")
    )
