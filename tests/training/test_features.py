"""The frozen-feature cache: key, atomic shared entries, equivalence, switch and fallback."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import Env, run_tuner
from tuner.assets.datasets import load_split, scan_dataset
from tuner.config.build import recipe_for, trial_setup
from tuner.config.spec import StudySpec, load_spec
from tuner.errors import CacheError
from tuner.recipes import BASES, Params
from tuner.training import extraction, feature_store, features
from tuner.training.feature_store import FeatureStore
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


def _store(spec: StudySpec) -> FeatureStore:
    setup = trial_setup(spec)
    return FeatureStore(features.cache_dir(setup), features.cache_key(setup))


def fake_row(image: object) -> np.ndarray:
    """A stand-in for the base: a row drawn from the image file's bytes."""
    data = image.read_bytes() if isinstance(image, Path) else np.asarray(image).tobytes()
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "big")
    return np.random.default_rng(seed).random(16, dtype=np.float32)


def fake_extraction(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the base by :func:`fake_row`; returns the images extracted per call."""
    calls: list[int] = []

    def extract(
        _extractor: object, images: list[Path], _setup: object, report: object = None
    ) -> np.ndarray:
        calls.append(len(images))
        if callable(report):
            report(len(images))
        return np.stack([fake_row(image) for image in images])

    monkeypatch.setattr(extraction, "build_feature_extractor", lambda _setup: object())
    monkeypatch.setattr(extraction, "extract_features", extract)
    return calls


# (a) The model part's key changes with each of its components; the dataset is not in it.


def test_key_is_stable_for_the_same_inputs(env: Env) -> None:
    assert features.cache_key(trial_setup(_spec(env))) == features.cache_key(_setup(env))
    assert "dataset" not in features.cache_key_parts(_setup(env))
    assert features.cache_key_parts(_setup(env))["version"] == 2


def test_key_changes_with_base_model(env: Env) -> None:
    heads = {"model.recipe": "dense-head"}
    keys = {features.cache_key(_setup(env, **heads, **{"model.base": base})) for base in BASES}
    assert len(keys) == len(BASES)
    # The head does not matter: every head recipe on a base shares its features.
    assert features.cache_key(_setup(env, **heads)) == features.cache_key(_setup(env))


def test_key_changes_with_weights_identity(env: Env, tmp_path: Path) -> None:
    weights_file = tmp_path / "xception.weights.h5"
    weights_file.write_bytes(b"first weights")
    key_file = features.cache_key(_setup(env, **{"model.weights": str(weights_file)}))
    weights_file.write_bytes(b"other weights")  # same path, other content
    keys = {
        features.cache_key(_setup(env, **{"model.weights": "imagenet"})),
        features.cache_key(_setup(env, **{"model.weights": "none"})),
        key_file,
        features.cache_key(_setup(env, **{"model.weights": str(weights_file)})),
    }
    assert len(keys) == 4


def test_key_changes_with_input_size(env: Env) -> None:
    small = features.cache_key(_setup(env, **{"data.image_size": "[71, 71]"}))
    assert features.cache_key(_setup(env, **{"data.image_size": "[150, 150]"})) != small


def test_key_changes_with_preprocessing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    before = features.cache_key(_setup(env))
    other = dataclasses.replace(BASES["xception"], preprocessing="x/255, bilinear resize")
    monkeypatch.setitem(BASES, "xception", other)
    assert features.cache_key(_setup(env)) != before


def test_key_changes_with_keras_version(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    before = features.cache_key(_setup(env))
    monkeypatch.setattr(keras, "__version__", "3.0.0")
    assert features.cache_key(_setup(env)) != before


def test_cache_dir_precedence(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert features.cache_dir(_setup(env)) == env.cache
    assert features.cache_dir(_setup(env, **{"cache.dir": ""})) == tmp_path / "env"
    monkeypatch.delenv("TUNER_CACHE_DIR")
    assert features.cache_dir(_setup(env, **{"cache.dir": ""})) == tmp_path / "xdg" / "tuner"


# (b) A failed or damaged pack is never read; its rows are computed again.


def test_write_failing_halfway_leaves_no_pack(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, scan = _spec(env), scan_dataset(env.data)
    calls = fake_extraction(monkeypatch)
    real_write = feature_store.write_atomic
    written: list[str] = []

    def disk_full_on_second_pack(path: Path, write: Any, **kw: Any) -> None:
        if path.suffix != ".npz":
            return real_write(path, write, **kw)
        if not written:
            written.append(path.name)
            return real_write(path, write, **kw)

        def half(f: BinaryIO) -> None:
            f.write(b"PK\x03\x04 half an archive")
            raise OSError(28, "No space left on device")

        return real_write(path, half, **kw)

    monkeypatch.setattr(feature_store, "write_atomic", disk_full_on_second_pack)
    with pytest.raises(CacheError, match="No space left on device"):
        features.load_or_compute(trial_setup(spec), scan)
    store = _store(spec)
    assert len(store.packs()) == 1  # the train split's pack; validation's never appeared
    assert not list((store.folder / "packs").glob(".*.tmp"))

    monkeypatch.setattr(feature_store, "write_atomic", real_write)
    fs = features.load_or_compute(trial_setup(spec), scan)
    assert fs.status == "miss" and fs.computed == scan.count("validation")
    assert calls == [scan.count("train"), scan.count("validation"), scan.count("validation")]
    assert features.load_or_compute(trial_setup(spec), scan).status == "hit"


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes", "garbage", "empty"])
def test_damaged_pack_is_recomputed(
    env: Env, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    spec, scan = _spec(env), scan_dataset(env.data)
    calls = fake_extraction(monkeypatch)
    good = features.load_or_compute(trial_setup(spec), scan)
    train_pack = _store(spec).packs()[0]
    data = train_pack.read_bytes()
    if damage == "truncate":
        train_pack.write_bytes(data[: len(data) // 2])
    elif damage == "flip-bytes":  # still a zip, but the CRC no longer matches
        middle = len(data) // 2
        train_pack.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]))
    elif damage == "garbage":
        train_pack.write_bytes(b"not an archive at all")
    else:
        train_pack.write_bytes(b"")
    again = features.load_or_compute(trial_setup(spec), scan)
    assert again.status == "miss" and again.computed == scan.count("train")
    assert calls == [scan.count("train"), scan.count("validation"), scan.count("train")]
    np.testing.assert_array_equal(again.features["train"], good.features["train"])
    assert not train_pack.exists()  # the damaged pack was dropped under the lock
    assert features.load_or_compute(trial_setup(spec), scan).status == "hit"


KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from tuner.training import extraction, features
from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec

flag = Path(sys.argv[1])
spec = load_spec("clothing", sys.argv[2:])
def extract(_e, images, _s, _r=None):
    return np.zeros((len(images), 16), np.float32)
def stuck_savez(f, **arrays):
    f.write(b"PK\\x03\\x04 a partial archive")
    f.flush()
    flag.touch()
    time.sleep(600)
extraction.build_feature_extractor = lambda _spec: object()
extraction.extract_features = extract
np.savez = stuck_savez
features.load_or_compute(trial_setup(spec), scan_dataset(spec.data.dir))
"""


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_no_pack(
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
    store = _store(spec)
    assert list((store.folder / "packs").glob(".*.tmp")), "the kill should leave a temporary file"
    assert not store.packs()

    calls = fake_extraction(monkeypatch)
    scan = scan_dataset(env.data)
    fs = features.load_or_compute(trial_setup(spec), scan)  # the dead writer's lock is free
    assert fs.status == "miss" and calls == [scan.count("train"), scan.count("validation")]
    assert not list((store.folder / "packs").glob(".*.tmp"))


# (c) Two processes want the same rows: one computes, the other waits for it.

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
print(json.dumps({"status": fs.status, "computed": fs.computed, "start": start,
                  "end": time.time()}))
"""


@pytest.mark.slow
def test_two_processes_compute_the_rows_once(env: Env, tmp_path: Path) -> None:
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
    assert miss["computed"] == 60 and hit["computed"] == 0
    # Both asked at once; the hit could only finish after the miss had written the rows.
    assert abs(hit["start"] - miss["start"]) < 1.0
    written = max(p.stat().st_mtime for p in _store(_spec(env)).packs())
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
    assert lines[0] == f"feature cache off: {reason}; running the full pipeline"
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
    monkeypatch.setattr(extraction, "spare_threads", lambda: 2)
    monkeypatch.setattr(features, "CHILD_MIN_IMAGES", 1)
    seen: list[tuple[str, int, int]] = []
    fs = features.load_or_compute(trial_setup(spec), scan, progress=lambda *a: seen.append(a))
    assert fs.status == "miss" and seen[-1] == ("validation", 20, 20)  # the child's progress
    child = fs.features["train"]
    shutil.rmtree(_store(spec).folder / "packs")
    failing = ([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
               dict(os.environ))  # fmt: skip
    monkeypatch.setattr(extraction, "extraction_process", lambda job, threads: failing)
    here = features.load_or_compute(trial_setup(spec), scan)
    assert here.status == "miss"
    np.testing.assert_allclose(here.features["train"], child, rtol=1e-4, atol=1e-5)
    folder = _store(spec).folder.parent
    assert not list(folder.glob(".*job-*")) and not list(folder.glob(".*stderr-*"))
