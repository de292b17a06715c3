"""Images decoded once: shared by a worker's trials, on disk over the limit, keyed by content."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import optuna
import pytest

from tests.conftest import Env
from tuner.assets.datasets import load_split, scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.errors import CacheError, SpecError
from tuner.training import decoded
from tuner.training.model import assemble, compile_model

SIZE = (32, 32)


@pytest.fixture(autouse=True)
def _forget() -> Any:
    decoded.clear()
    yield
    decoded.clear()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The splits read through image_dataset_from_directory, in order."""
    calls: list[str] = []

    def counting(scan: Any, split: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(split)
        return load_split(scan, split, *args, **kwargs)

    monkeypatch.setattr(decoded, "load_split", counting)
    return calls


def _split(data: Path, cache: Path, limit: int = 1024, split: str = "train") -> Any:
    scan = scan_dataset(data)
    return decoded.decoded_split(scan, split, SIZE, memory_limit_mb=limit, cache_root=cache)


def _batches(ds: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1])
        for p, q in zip(a, b, strict=True)
    )


def _keras_batches(data: Path, split: str, seed: int | None) -> Any:
    shuffle = seed is not None
    return load_split(scan_dataset(data), split, SIZE, 8, shuffle=shuffle, seed=seed or 0)


@pytest.mark.parametrize("limit", [1024, 0], ids=["memory", "disk"])
def test_batches_are_the_ones_keras_gives_epoch_after_epoch(
    tiny_data: Path, tmp_path: Path, limit: int
) -> None:
    train = _split(tiny_data, tmp_path, limit)
    assert train.where == ("memory" if limit else "disk")
    for seed in (3, 1234):
        keras.utils.set_random_seed(seed)
        theirs = _keras_batches(tiny_data, "train", seed)
        keras.utils.set_random_seed(seed)
        ours = decoded.training_batches(train, 8, seed)
        first = _batches(ours)
        assert _same(first, _batches(theirs))
        assert _same(_batches(ours), _batches(theirs))  # reshuffled alike in the next epoch
        assert not _same(first, _batches(ours))
    val = _split(tiny_data, tmp_path, limit, "validation")
    assert _same(
        _batches(decoded.validation_batches(val, 8)),
        _batches(_keras_batches(tiny_data, "validation", None)),
    )


def test_a_process_decodes_a_split_once(
    tiny_data: Path, tmp_path: Path, counted: list[str]
) -> None:
    first = _split(tiny_data, tmp_path)
    assert _split(tiny_data, tmp_path) is first
    assert counted == ["train"]
    assert decoded.held_bytes() == first.nbytes == len(first) * 32 * 32 * 3 * 4
    assert not (tmp_path / "decoded").exists()


def test_over_the_limit_a_split_goes_to_disk_once_per_machine(
    tiny_data: Path, tmp_path: Path, counted: list[str]
) -> None:
    train = _split(tiny_data, tmp_path, limit=0)
    assert train.where == "disk" and isinstance(train.images, np.memmap)
    assert (tmp_path / "decoded" / f"{train.key}.npy").is_file()
    assert decoded.held_bytes() == 0
    assert not list((tmp_path / "decoded").glob(".*"))  # no temporary file left
    decoded.clear()  # another worker of the machine: reads the file, decodes nothing
    again = _split(tiny_data, tmp_path, limit=0)
    assert counted == ["train"]
    assert np.array_equal(again.images, train.images)
    decoded.clear()
    in_memory = _split(tiny_data, tmp_path)
    assert np.array_equal(np.asarray(in_memory.images), train.images)


def test_the_limit_counts_what_the_process_holds(tiny_data: Path, tmp_path: Path) -> None:
    scan = scan_dataset(tiny_data)
    train = decoded.decoded_split(scan, "train", SIZE, memory_limit_mb=1, cache_root=tmp_path)
    assert train.where == "memory"  # 40 images of 32x32: 0.47 MB
    val = decoded.decoded_split(
        scan, "validation", (64, 64), memory_limit_mb=1, cache_root=tmp_path
    )
    assert val.where == "disk"  # 20 images of 64x64 (0.94 MB) would pass 1 MB in all


def test_a_damaged_disk_entry_is_decoded_again(
    tiny_data: Path, tmp_path: Path, counted: list[str]
) -> None:
    train = _split(tiny_data, tmp_path, limit=0)
    entry = tmp_path / "decoded" / f"{train.key}.npy"
    expected = np.array(train.images)
    del train
    decoded.clear()
    entry.write_bytes(entry.read_bytes()[:1000])  # a truncated file
    (entry.parent / f".{entry.stem}.abc.npy").write_bytes(b"half")  # and a killed writer's
    again = _split(tiny_data, tmp_path, limit=0)
    assert counted == ["train", "train"]
    assert np.array_equal(again.images, expected)
    assert not list(entry.parent.glob(".*"))


def test_the_key_changes_when_an_image_changes(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    before = _split(data, tmp_path / "cache")
    scan = scan_dataset(data)
    image = scan.files["train"][0]
    other = scan.files["train"][-1]
    image.write_bytes(other.read_bytes())
    after = _split(data, tmp_path / "cache")
    assert after.key != before.key
    assert np.array_equal(np.asarray(after.images)[0], np.asarray(after.images)[-1])
    assert decoded.decoded_key(scan, "train", (48, 48)) != decoded.decoded_key(scan, "train", SIZE)
    copy = tmp_path / "copy"  # the same content elsewhere shares the key (and the disk entry)
    shutil.copytree(data, copy)
    assert decoded.decoded_key(scan_dataset(copy), "train", SIZE) == after.key


@pytest.mark.parametrize(("value", "needle"), [("-1", "at least 0"), ("lots", "an integer")])
def test_a_bad_memory_limit_is_a_one_line_spec_error(value: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as caught:
        load_spec("clothing-scratch", [f"data.memory_limit_mb={value}"])
    assert "data.memory_limit_mb" in str(caught.value) and "\n" not in str(caught.value)


def _scratch(env: Env, epochs: int = 1) -> Any:
    sets = [s.removeprefix("--set=") for s in env.overrides(epochs=epochs)]
    return trial_setup(load_spec("clothing-scratch", [*sets, "data.image_size=[32, 32]"]))


@pytest.mark.slow
def test_every_trial_of_a_worker_reads_the_images_decoded_once(
    env: Env, counted: list[str]
) -> None:
    from tuner.training.objective import make_objective, prepare_data

    setup, lines = _scratch(env), []
    data = prepare_data(setup, scan_dataset(env.data), lines.append)
    assert "images decoded once: 40 + 20" in lines[1] and "read from memory" in lines[1]
    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(setup, data, say=lambda _: None), n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert prepare_data(setup, scan_dataset(env.data), lines.append).train_images is (
        data.train_images
    )
    assert counted == ["train", "validation"]  # two trials, and a second worker in the process


@pytest.mark.slow
def test_training_is_the_same_as_on_images_decoded_every_epoch(env: Env) -> None:
    setup, seed = _scratch(env), 7
    train = _split(env.data, env.cache)
    val = _split(env.data, env.cache, split="validation")
    histories, weights = [], []
    for ours in (False, True):
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        built = assemble(setup, setup.recipe, {"learning_rate": 1e-3}, 10)
        compile_model(built.model, 1e-3)
        if ours:
            fit = decoded.training_batches(train, 8, seed)
            check = decoded.validation_batches(val, 8)
        else:
            fit = _keras_batches(env.data, "train", seed)
            check = _keras_batches(env.data, "validation", None)
        history = built.model.fit(fit, validation_data=check, epochs=2, shuffle=False, verbose=0)
        histories.append(history.history)
        weights.append([np.asarray(w) for w in built.trained])
    assert histories[0] == histories[1]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_images_that_change_while_decoding_are_an_error(tiny_data: Path, tmp_path: Path) -> None:
    scan = scan_dataset(tiny_data)
    fewer = dataclasses.replace(scan, files={**scan.files, "train": scan.files["train"][:-1]})
    with pytest.raises(CacheError, match="no longer holds the 39 images"):
        decoded.decoded_split(fewer, "train", SIZE, memory_limit_mb=1024, cache_root=tmp_path)
