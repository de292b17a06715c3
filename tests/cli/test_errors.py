"""Every user mistake gets one line, ``error: <what>; <how to fix>``, exit 2, and loses nothing.

Each case runs through the CLI: mostly in-process (``main(argv)``), and in a
subprocess where a real process matters (TensorFlow's log, proxies, timing,
file-size limits, kills). Every case that points at an existing study checks
that its trials are exactly the same afterwards. Almost all errors happen
before TensorFlow is imported, so most of this file runs in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from tests.conftest import (
    PG_URL,
    REPO,
    Cli,
    Env,
    _server_reachable,
    run_tuner,
    tuner_cmd,
    unique_name,
)
from tuner.common.attrs import SPACE_ATTR
from tuner.config.build import open_study, trial_setup
from tuner.config.spec import load_spec
from tuner.space.params import suggest
from tuner.storages.storage import open_storage
from tuner.study.opening import study_attr

SECRET = "s3cr3t-pw"


# ---------------------------------------------------------------- helpers


def one_error_line(code: int, err: str, *needles: str) -> str:
    """Assert the contract of a user error and return its line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "; " in line, f"the line should say what is wrong; then how to fix it: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    return line


def make_study(
    url: str, name: str = "clothing", sets: Sequence[str] = ("model.weights=none",)
) -> None:
    """A study with four finished trials (3 complete, 1 pruned), made without TensorFlow.

    ``sets`` are the spec overrides of the workers that made it, in ``KEY=VALUE`` form.
    """
    spec = load_spec("clothing", [f"study.name={name}", *sets])
    study = open_study(spec, open_storage(url, spec.storage))

    def objective(trial: optuna.Trial) -> float:
        suggest(trial, spec.search.space)  # the warm-start rates, then TPE's
        curve = [0.3 + 0.1 * trial.number, 0.35 + 0.1 * trial.number]
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
        attrs = {
            "train_accuracy": [c + 0.05 for c in curve],
            "val_loss": [1.0, 0.9],
            "gap": 0.05,
            "epoch_seconds": [0.1, 0.1],
            "cache": "off",
            "worker": "test:1",
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if trial.number == 2:
            raise optuna.TrialPruned()
        return curve[-1]

    study.optimize(objective, n_trials=4)


def snapshot(url: str, name: str = "clothing") -> dict[str, Any]:
    """Everything about a study's trials that a bad command must not change."""
    study = optuna.load_study(study_name=name, storage=url)
    trials = [
        (
            t.number,
            t.state,
            t.value,
            t.params,
            t.intermediate_values,
            t.user_attrs,
            t.datetime_start,
            t.datetime_complete,
        )
        for t in study.get_trials(deepcopy=True)
    ]
    return {"trials": trials, "space": study_attr(study, SPACE_ATTR)}


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_STORAGE", raising=False)


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a SQLite storage holding study "clothing" with four finished trials."""
    url = f"sqlite:///{tmp_path_factory.mktemp('existing') / 'study.db'}"
    make_study(url)
    return url


@contextlib.contextmanager
def unchanged(url: str, name: str = "clothing") -> Iterator[None]:
    before = snapshot(url, name)
    finished = [t for t in before["trials"] if t[1] in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 4
    yield
    assert snapshot(url, name) == before


def make_images(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 2) -> Path:
    """A small valid dataset of real JPEG files."""
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.jpg")
    return root


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server or proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # the kernel completes the handshakes; nobody ever answers
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[None]:
    """Make ``folder`` truly unwritable, also for root (chmod alone does not stop root)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a folder read-only")
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i failed: {done.stderr.decode().strip()}")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = []
    try:
        assert not os.access(folder, os.W_OK)  # the check tuner makes must really see it
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        folder.chmod(0o755)


# ---------------------------------------------------------------- 1-4: study names, spec, --set

COMMANDS = ("worker", "status", "export", "dashboard")


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_study_name_lists_the_available_ones(
    command: str, existing: str, cli: Cli
) -> None:
    with unchanged(existing):
        code, _, err = cli(command, "--study", "no-such-study", "--storage", existing)
    line = one_error_line(code, err, "'no-such-study'", "available studies:", "clothing")
    assert ".toml" in line  # and how to give a spec file instead


def test_missing_spec_file_path(tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("status", "--study", str(tmp_path / "nope.toml"))
    one_error_line(code, err, str(tmp_path / "nope.toml"), "does not exist")
    (tmp_path / "dir.toml").mkdir()
    code, _, err = cli("status", "--study", str(tmp_path / "dir.toml"))
    one_error_line(code, err, str(tmp_path / "dir.toml"), "is a folder")


def test_data_dir_that_is_a_file(tmp_path: Path, existing: str, cli: Cli) -> None:
    a_file = tmp_path / "best.json"
    a_file.write_text("{}")
    with unchanged(existing):
        code, _, err = _worker(cli, existing, a_file)
    one_error_line(code, err, str(a_file), "is a file, not a folder", "data.dir")


def test_toml_syntax_error_names_the_file_and_line(
    tmp_path: Path, existing: str, cli: Cli
) -> None:
    spec = tmp_path / "broken.toml"
    spec.write_text('[study]\nname = "clothing"\n\n[train]\nepochs = = 3\n')
    with unchanged(existing):
        code, _, err = cli("worker", "--study", str(spec), "--storage", existing)
    one_error_line(code, err, str(spec), "line 5", "TOML")


BAD_SPEC_VALUES = [
    # (--set, what the line must name: the key and the allowed values)
    ("train.epochz=3", ["'train.epochz'", "train.epochs"]),
    ("search.learnig_rate.low=0.001", ["search.learnig_rate", "search.learning_rate?"]),
    ("train.epochs=abc", ["train.epochs", "an integer", "'abc'", "train.epochs=10"]),
    ("train.epochs=2.5", ["train.epochs", "an integer"]),
    ("cache.enabled=maybe", ["cache.enabled", "true or false"]),
    ("search.learning_rate.low=0.5", ["search.learning_rate.low", "0.5", ".high", "0.1"]),
    ("search.learning_rate.low=0.1", ["search.learning_rate.low", ".high"]),
    ("search.learning_rate.low=0", ["search.learning_rate.low", "> 0", "log=false"]),
    ("search.learning_rate.low=-1", ["search.learning_rate.low", "> 0", "log=false"]),
    ("pruner.kind=sometimes", ["pruner.kind", "'sometimes'", "median", "hyperband"]),
    ("model.recipe=resnet", ["model.recipe", "xception-head", "small-cnn"]),
    ("data.image_size=[150]", ["data.image_size", "a list of 2", "[150, 150]"]),
    ("train.epochs=0", ["train.epochs", "at least 1"]),
    ("study.name=", ["study.name is empty", "'clothing'"]),
    ("pruner.patience=-1", ["pruner.patience", "at least 0"]),
    ("pruner.n_warmup_steps=-2", ["pruner.n_warmup_steps", "at least 0"]),
    ("pruner.reduction_factor=1", ["pruner.reduction_factor", "at least 2"]),
    ("pruner.min_resource=0", ["pruner.min_resource", "at least 1"]),
    ("train=3", ["[train]", "table"]),
    ("data.memory_limit_mb=-1", ["data.memory_limit_mb", "at least 0", "0 keeps them on disk"]),
    ("data.memory_limit_mb=lots", ["data.memory_limit_mb", "an integer", "'lots'"]),
    ("model.precision=half", ["model.precision", "'half'", "auto, float32, bfloat16"]),
]


@pytest.mark.parametrize(("override", "needles"), BAD_SPEC_VALUES)
def test_bad_spec_value_names_the_key_and_allowed_values(
    override: str, needles: list[str], existing: str, cli
) -> None:  # type: ignore[no-untyped-def]
    with unchanged(existing):
        code, _, err = cli("worker", "--storage", existing, "--set", override)
    one_error_line(code, err, "--set", *needles)


def test_bad_values_in_a_spec_file_name_the_file(tmp_path: Path, existing: str, cli: Cli) -> None:
    spec = tmp_path / "mine.toml"
    base = '[study]\nname = "clothing"\n[search]\nwarm_start = []\n'
    cases = {
        "[train]\nepocks = 3\n": ["'train.epocks'", "train.epochs"],
        '[train]\nepochs = "ten"\n': ["train.epochs", "an integer"],
        "[search.learning_rate]\nlow = 0.5\nhigh = 0.01\n": ["search.learning_rate.low", ".high"],
        "[search.learning_rate]\nlow = 0.0\nlog = true\n": ["search.learning_rate.low", "log"],
    }
    for body, needles in cases.items():
        spec.write_text(base + body)
        with unchanged(existing):
            code, _, err = cli("worker", "--study", str(spec), "--storage", existing)
        line = one_error_line(code, err, str(spec), *needles)
        assert "--set" not in line.split(":")[1]  # blamed on the file, not an override


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "justaword"], ["'justaword'", "KEY=VALUE", "--set train.epochs=2"]),
        (["--set", "=3"], ["KEY=VALUE"]),
        (["--set", "train..epochs=1"], ["KEY=VALUE"]),
        (["--set", "data.image_size=[1,"], ["--set data.image_size=[1,", "a list of 2"]),
        (["--set", "train.epochs.x=3"], ["'epochs'", "not a section"]),
        (["--set", "search.learning_rate.low=abc"], ["search.learning_rate.low", "a number"]),
        # Usage errors that click itself finds are one line and exit 2 as well.
        (["--set"], ["--set", "requires an argument", "--help"]),
        (["--n-trials", "abc"], ["--n-trials", "--help"]),
        (["--n-trials", "0"], ["--n-trials", "--help"]),
        (["--no-such-option"], ["--no-such-option", "--help"]),
    ],
)
def test_malformed_set_and_usage_errors(
    args: list[str], needles: list[str], existing: str, cli
) -> None:  # type: ignore[no-untyped-def]
    with unchanged(existing):
        code, _, err = cli("worker", "--storage", existing, *args)
    one_error_line(code, err, *needles)


def test_a_string_key_is_never_misread_as_a_number(tmp_path: Path, cli: Cli) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = cli(
        "worker", "--storage", url, "--set", "data.dir=2024", "--set", "data.source="
    )
    one_error_line(code, err, "data folder 2024 (", "does not exist")  # a folder name, as given


def test_unknown_command(cli: Cli) -> None:
    code, _, err = cli("wroker")
    one_error_line(code, err, "'wroker'", "tuner --help")


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_shows_the_traceback(where: str, cli: Cli) -> None:
    args = ["status", "--study", "no-such-study"]
    code, _, err = cli(*([*args, "--debug"] if where == "after" else ["--debug", *args]))
    assert code == 2
    assert "Traceback" in err and "SpecError" in err
    assert err.strip().splitlines()[-1].startswith("error: unknown study 'no-such-study'")


# ---------------------------------------------------------------- 5-6: the dataset


def _worker(cli: Cli, url: str, data: Path, *sets: str) -> tuple[int, str, str]:
    args = ["--set", f"data.dir={data}", "--set", "model.weights=none", *sets]
    return cli("worker", "--storage", url, *args)  # type: ignore[no-any-return]


def test_missing_data_dir_without_a_source(tmp_path: Path, existing: str, cli: Cli) -> None:
    with unchanged(existing):
        code, _, err = _worker(cli, existing, tmp_path / "nowhere", "--set", "data.source=")
    one_error_line(code, err, str(tmp_path / "nowhere"), "does not exist", "data.dir")


def test_missing_data_dir_whose_download_fails(tmp_path: Path, existing: str, cli: Cli) -> None:
    """Only the folder the spec file names is downloaded; offline, one command says what works."""
    mirror = f"http://127.0.0.1:{closed_port()}/clothing.zip"
    spec = tmp_path / "clothing.toml"
    text = (REPO / "studies" / "clothing.toml").read_text()
    spec.write_text(text.replace('"data/clothing-dataset-small"', f'"{tmp_path / "d"}"'))
    with unchanged(existing):
        sets = ["--set", f"data.url={mirror}", "--set", "model.weights=none"]
        code, _, err = cli("worker", "--study", str(spec), "--storage", existing, *sets)
    one_error_line(
        code, err, str(tmp_path / "d"), mirror,
        f"offline, run `tuner worker --study {spec} --set data.dir=PATH/clothing-dataset-small`",
    )  # fmt: skip
    assert not (tmp_path / "d").exists()


def test_a_data_dir_given_with_set_is_never_downloaded_into(
    tmp_path: Path, existing: str, cli
) -> None:  # type: ignore[no-untyped-def]
    typo = tmp_path / "data" / "clothng"
    with unchanged(existing):
        code, _, err = _worker(cli, existing, typo, "--set", "data.url=http://127.0.0.1:9/x.zip")
    one_error_line(code, err, f"data folder {typo} does not exist", f"--dest {typo}")
    assert list(tmp_path.iterdir()) == []  # no folder, no lock file


@pytest.mark.parametrize("case", ["no-split", "classes-differ", "empty-class", "no-classes"])
def test_malformed_dataset_folders(case: str, tmp_path: Path, existing: str, cli: Cli) -> None:
    data = make_images(tmp_path / "data")
    if case == "no-split":
        shutil.rmtree(data / "validation")
        needles = [str(data), "validation/"]
    elif case == "classes-differ":
        (data / "validation" / "b").rename(data / "validation" / "c")
        needles = ["train/", "validation/", "'b'", "'c'", "same classes"]
    elif case == "empty-class":
        shutil.rmtree(data / "train" / "b")
        (data / "train" / "b").mkdir()
        needles = [str(data / "train" / "b"), "holds no images"]
    else:
        for split in ("train", "validation"):
            shutil.rmtree(data / split)
            (data / split).mkdir()
        needles = [str(data / "train"), "no class folders"]
    with unchanged(existing):
        code, _, err = _worker(cli, existing, data)
    one_error_line(code, err, *needles)


def _bad_files(data: Path) -> dict[str, tuple[Path, bytes]]:
    """Three kinds of bad file: a corrupt JPEG, a truncated JPEG and a text file."""
    good = next((data / "train" / "b").glob("*.jpg")).read_bytes()
    return {
        "corrupt": (data / "train" / "a" / "corrupt.jpg", b"\xff\xd8\xff\xe0 not a JPEG"),
        "truncated": (data / "train" / "b" / "truncated.jpg", good[: len(good) // 2]),
        "text": (data / "validation" / "b" / "notes.jpg", b"not an image\n"),  # .txt: skipped
    }


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "text"])
def test_a_bad_file_among_the_images_is_named(
    kind: str, tmp_path: Path, existing: str, cli
) -> None:  # type: ignore[no-untyped-def]
    data = make_images(tmp_path / "data", per_class=4)
    path, content = _bad_files(data)[kind]
    path.write_bytes(content)
    with unchanged(existing):
        code, _, err = _worker(cli, existing, data)
    one_error_line(code, err, str(path), "not a readable image", "data.skip_bad_files=true")


# ---------------------------------------------------------------- 7: weights


def test_weights_file_missing_or_corrupt(tmp_path: Path, existing: str, cli: Cli) -> None:
    import h5py

    data = make_images(tmp_path / "data")
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"\x00" * 1000)
    empty = tmp_path / "empty.weights.h5"
    h5py.File(empty, "w").close()
    wrong_name = tmp_path / "xception.bin"
    wrong_name.write_bytes(b"x")
    cases = {
        tmp_path / "missing.weights.h5": "does not exist",
        garbage: "corrupt",
        empty: "corrupt",
        wrong_name: "must end in",
    }
    for path, what in cases.items():
        with unchanged(existing):
            code, _, err = cli(
                "worker", "--storage", existing, "--set", f"data.dir={data}",
                "--set", f"model.weights={path}", "--set", "study.name=other",
            )  # fmt: skip
        one_error_line(code, err, str(path), what, "model.weights=none")
    assert "other" not in optuna.study.get_all_study_names(existing)  # nothing created


@pytest.mark.slow
def test_weights_file_of_another_model_is_an_error_not_a_partial_load(tmp_path: Path) -> None:
    import warnings

    import keras

    from tuner.errors import WeightsError
    from tuner.training.model import build_feature_extractor

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    spec = load_spec("clothing", [f"model.weights={path}", "data.image_size=[71, 71]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match=r"could not be loaded.*model\.weights=none"):
            build_feature_extractor(trial_setup(spec))
    assert not [w for w in caught if issubclass(w.category, UserWarning)]  # no extra lines


@pytest.mark.slow  # TensorFlow
def test_imagenet_download_that_hangs_fails_fast(
    tmp_path: Path, existing: str, silent_server: int
) -> None:
    """A real process, offline behind a proxy that never answers: bounded by download_timeout."""
    data = make_images(tmp_path / "data")
    proxy = f"http://127.0.0.1:{silent_server}"
    start = time.monotonic()
    with unchanged(existing):
        done = run_tuner(
            "worker", "--storage", existing, "--set", f"data.dir={data}",
            "--set", "model.download_timeout=2", "--set", "study.name=other",
            env={"https_proxy": proxy, "HTTPS_PROXY": proxy, "KERAS_HOME": str(tmp_path)},
            timeout=60,
        )  # fmt: skip
    elapsed = time.monotonic() - start
    one_error_line(done.returncode, done.stderr, "ImageNet", "model.weights=none", "PATH")
    assert elapsed < 10, f"took {elapsed:.1f}s"


@pytest.mark.slow
def test_keras_own_imagenet_download_is_bounded_too(tmp_path: Path, silent_server: int) -> None:
    """Keras downloads with urlretrieve, which has no timeout; tuner.training.model bounds it."""
    proxy = f"http://127.0.0.1:{silent_server}"
    code = (
        "import time; from tuner.config.spec import load_spec\n"
        "from tuner.errors import WeightsError\n"
        "from tuner.training.model import build_feature_extractor\n"
        "from tuner.config.build import trial_setup\n"
        "spec = load_spec('clothing', ['model.download_timeout=2', 'data.image_size=[71, 71]'])\n"
        "start = time.monotonic()\n"
        "try:\n    build_feature_extractor(trial_setup(spec))\nexcept WeightsError as e:\n"
        "    print(f'{time.monotonic() - start:.1f}', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "KERAS_HOME": str(tmp_path),
        },
    )
    assert done.returncode == 0, done.stderr
    seconds, message = done.stdout.strip().splitlines()[-1].split(" ", 1)  # after Keras' own
    assert float(seconds) < 10
    assert "cannot download the ImageNet weights" in message and "model.weights=none" in message


# ---------------------------------------------------------------- 8: storage URLs


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("notaurl", ["malformed storage URL", "sqlite:///FILE.db"]),
        ("postgresql://u:x@host:notaport/db", ["malformed storage URL", "postgresql://"]),
        ("foo://user@host/db", ["unknown storage scheme 'foo'", "sqlite", "journal"]),
        ("redis://localhost/0", ["unknown storage scheme 'redis'"]),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_malformed_url_and_unknown_scheme(
    command: str, url: str, needles: list[str], cli: Cli
) -> None:
    code, _, err = cli(command, "--storage", url)
    one_error_line(code, err, *needles)


def test_storage_folder_missing_or_a_file(tmp_path: Path, cli: Cli) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 's.db'}": "does not exist",
        f"sqlite:///{a_file / 's.db'}": f"{a_file} is a file, not a folder",
        f"journal://{tmp_path / 'no' / 'j.log'}": "does not exist",
    }
    for url, what in cases.items():
        code, _, err = cli("worker", "--storage", url)
        one_error_line(code, err, what, "--storage")
    assert not (tmp_path / "no").exists()


def test_sqlite_folder_not_writable(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    url = f"sqlite:///{folder / 'study.db'}"
    make_study(url)
    before = snapshot(url)
    with read_only_folder(folder):
        for command in ("worker", "status", "export"):
            code, _, err = cli(command, "--storage", url)
            one_error_line(code, err, str(folder), "not writable", "--storage")
        code, _, err = cli("worker", "--storage", f"sqlite:///{folder / 'new.db'}")
        one_error_line(code, err, str(folder), "not writable")
    assert snapshot(url) == before
    assert not (folder / "new.db").exists()


def test_a_file_that_is_not_a_database(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes\n")
    code, _, err = cli("status", "--storage", f"sqlite:///{path}")
    one_error_line(code, err, str(path), "not a database", "SQLite")
    assert path.read_text() == "these are my notes\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_storage_urls_that_name_no_usable_file(command: str, tmp_path: Path, cli: Cli) -> None:
    export = tmp_path / "best.json"
    export.write_text('{\n  "best_value": 0.5\n}\n')  # JSON, but not a journal
    ops = tmp_path / "ops.log"
    ops.write_text('{"op_code": 99}\n')
    cases = {
        "sqlite:///": ["names no database file", "sqlite:///FILE.db"],
        "sqlite:///:memory:": ["in-memory", "sqlite:///FILE.db"],
        f"sqlite:///{tmp_path}": ["is a folder"],
        f"journal://{tmp_path}": ["is a folder"],
        f"journal://{export}": [str(export), "not an Optuna journal"],
        f"journal://{ops}": [str(ops), "not an Optuna journal"],
    }
    for url, needles in cases.items():
        code, _, err = cli(command, "--storage", url)
        one_error_line(code, err, *needles)
    assert export.read_text() == '{\n  "best_value": 0.5\n}\n'


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs /proc, a folder no file fits in"
)
def test_a_folder_that_refuses_new_files_fails_at_once(cli: Cli) -> None:
    """os.access says yes to root everywhere; /proc takes no new file even from root."""
    for url in ("sqlite:////proc/tuner-study.db", "journal:///proc/tuner-study.log"):
        start = time.monotonic()
        code, _, err = cli("worker", "--storage", url)
        one_error_line(code, err, "/proc", "not writable", "--storage")
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql"])
def test_unreachable_server_fails_fast(scheme: str, cli: Cli) -> None:
    """A closed port, with the default connect_timeout of 10 s: refused at once, no retries."""
    url = f"{scheme}://user@127.0.0.1:{closed_port()}/db"
    start = time.monotonic()
    code, _, err = cli("worker", "--storage", url)
    elapsed = time.monotonic() - start
    one_error_line(code, err, "cannot open storage", "server is running")
    assert elapsed < 5, f"took {elapsed:.1f}s"


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_silent_server_fails_within_connect_timeout(
    scheme: str, silent_server: int, cli: Cli
) -> None:
    """A server that accepts and never answers: bounded by storage.connect_timeout."""
    url = f"{scheme}://user@127.0.0.1:{silent_server}/db"
    start = time.monotonic()
    code, _, err = cli("status", "--storage", url, "--set", "storage.connect_timeout=2")
    elapsed = time.monotonic() - start
    one_error_line(code, err, "cannot open storage", "server is running")
    assert elapsed < 8, f"took {elapsed:.1f}s"


# ---------------------------------------------------------------- 9: status and export


@pytest.mark.parametrize("command", ["status", "export"])
def test_study_with_no_finished_trial(command: str, tmp_path: Path, cli: Cli) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    spec = load_spec("clothing")
    open_study(spec, open_storage(url, spec.storage))  # created, warm start queued, nothing run
    code, out, err = cli(command, "--storage", url)
    one_error_line(code, err, "'clothing'", "no complete trial yet", "tuner worker")
    if command == "status":
        assert "WAITING" in out  # the tables still show what is queued


@pytest.mark.parametrize("command", ["status", "export", "dashboard"])
def test_study_that_does_not_exist(command: str, existing: str, cli: Cli) -> None:
    with unchanged(existing):
        code, _, err = cli(command, "--storage", existing, "--set", "study.name=other")
    one_error_line(code, err, "'other' does not exist", "clothing", "tuner worker")


def test_export_to_unwritable_places(tmp_path: Path, existing: str, cli: Cli) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        ("--out", str(a_file / "best.json")): "--out",
        ("--plots", str(a_file / "plots")): "--plots",
        ("--model", str(tmp_path / "best.h5")): ".keras",
    }
    for args, needle in cases.items():
        with unchanged(existing):
            code, _, err = cli("export", "--storage", existing, *args)
        one_error_line(code, err, args[1], needle)
    assert a_file.read_text() == "x"
    # every output is checked before any is written, the model included
    model = tmp_path / "best.keras"
    for bad in (["--out", str(a_file / "best.json")], ["--out", str(tmp_path)],
                ["--plots", str(a_file)]):  # fmt: skip
        with unchanged(existing):
            code, _, err = cli("export", "--storage", existing, "--model", str(model), *bad)
        one_error_line(code, err, bad[1], bad[0])
        assert not model.exists()


def test_export_refuses_a_missing_folder_unless_told_to_make_it(
    tmp_path: Path, existing: str, cli
) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nonexistent"
    for option, path in (("--out", missing / "best.json"), ("--model", missing / "m.keras"),
                         ("--plots", missing / "plots")):  # fmt: skip
        with unchanged(existing):
            code, _, err = cli("export", "--storage", existing, option, str(path))
        one_error_line(code, err, f"its folder {missing} does not exist", "--mkdir")
        assert not missing.exists()
    code, _, err = cli(
        "export", "--storage", existing, "--out", str(missing / "b.json"), "--mkdir"
    )
    assert code == 0, err
    assert json.loads((missing / "b.json").read_text())["study"] == "clothing"


# ---------------------------------------------------------------- 10: a changed search space


def _join(existing: str, cli: Cli, *sets: str) -> tuple[int, str, str]:
    """A worker joining ``existing`` with ``sets``; the study checks come before the data's."""
    with unchanged(existing):
        return cli(  # type: ignore[no-any-return]
            "worker", "--storage", existing, "--set=data.dir=/nonexistent",
            "--set=model.weights=none", *(f"--set={s}" for s in sets),
        )  # fmt: skip


def test_changed_learning_rate_range_is_refused(existing: str, cli: Cli) -> None:
    code, _, err = _join(existing, cli, "search.learning_rate.high=0.5")
    one_error_line(
        code,
        err,
        "[0.0001, 0.1]",
        "[0.0001, 0.5]",
        "--set study.name=clothing-2",
        "--accept-space-change",
    )
    code, _, err = _join(existing, cli, "search.learning_rate.log=false")
    one_error_line(code, err, "(log)", "--accept-space-change")


def test_joining_with_another_training_setup_is_refused(existing: str, cli: Cli) -> None:
    code, _, err = _join(existing, cli, "data.image_size=[100, 100]")
    one_error_line(
        code, err, "data.image_size=[150, 150]", "data.image_size=[100, 100]",
        "--set study.name=clothing-2",
    )  # fmt: skip
    with unchanged(existing):  # a missing weights file is named as such, not compared
        code, _, err = cli("worker", "--storage", existing, "--set", "model.weights=nothing")
    one_error_line(code, err, "weights file nothing does not exist")


def test_a_weights_file_is_compared_by_its_name(existing: str, tmp_path: Path, cli: Cli) -> None:
    import h5py

    weights = tmp_path / "x.h5"
    with h5py.File(weights, "w") as f:
        f.attrs["layer_names"] = ["dense"]
    with unchanged(existing):
        code, _, err = cli("worker", "--storage", existing, "--set", f"model.weights={weights}")
    one_error_line(code, err, "model.weights=none", "model.weights=x.h5 (a file)")


def test_other_epochs_or_batch_size_are_a_warning(existing: str) -> None:
    from tuner.config.build import load_existing_study
    from tuner.config.join import budget_difference

    spec = load_spec("clothing", ["model.weights=none"])
    study = load_existing_study(spec, open_storage(existing, spec.storage))
    assert budget_difference(study, spec) is None
    other = load_spec("clothing", ["model.weights=none", "train.epochs=3"])
    message = budget_difference(study, other)
    assert message is not None and "train.epochs=10" in message and "train.epochs=3" in message


def test_a_first_run_that_fails_on_its_data_creates_no_study(tmp_path: Path, cli: Cli) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code, _, err = _worker(cli, url, tmp_path / "nowhere", "--set", "data.source=")
    one_error_line(code, err, "does not exist")
    spec = load_spec("clothing")
    assert optuna.study.get_all_study_names(open_storage(url, spec.storage)) == []


@pytest.mark.slow
def test_accept_space_change_continues_the_study(env: Env) -> None:
    make_study(env.url, sets=[o.removeprefix("--set=") for o in env.overrides()])
    before = snapshot(env.url)
    new_range = [
        "--set=search.learning_rate.low=0.001",
        "--set=search.learning_rate.high=0.01",
        "--set=search.warm_start=[0.001]",
    ]
    args = ["worker", "--storage", env.url, "--n-trials", "5", *env.overrides(), *new_range]
    refused = run_tuner(*args, cwd=env.root, timeout=120)
    one_error_line(refused.returncode, refused.stderr, "--accept-space-change")
    done = run_tuner(*args, "--accept-space-change", cwd=env.root, timeout=300)
    assert done.returncode == 0, done.stderr
    after = snapshot(env.url)
    assert after["trials"][:4] == before["trials"]  # the old trials are untouched
    new = optuna.load_study(study_name="clothing", storage=env.url).trials[4]
    assert new.state == TrialState.COMPLETE
    assert 0.001 <= new.params["learning_rate"] <= 0.01
    assert after["space"] == {"learning_rate": {"low": 0.001, "high": 0.01, "log": True}}


def test_a_pool_larger_than_the_machine_is_refused(existing: str, cli: Cli) -> None:
    cores = os.cpu_count() or 1
    with unchanged(existing):
        code, _, err = cli("worker", "--storage", existing, "--workers", str(cores + 1))
    one_error_line(code, err, f"--workers {cores + 1}", f"{cores} CPU cores", f"--workers {cores}")


# ---------------------------------------------------------------- 6 (skip) and 11: real workers


@pytest.mark.slow
def test_skip_bad_files_warns_with_their_names(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    first = sorted(os.listdir(data / "train"))[0]
    corrupt = data / "train" / first / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 broken")
    text = data / "validation" / first / "notes.jpg"  # a .txt Keras skips; this it would read
    text.write_text("not an image\n")
    make_study(env.url, sets=[o.removeprefix("--set=") for o in env.overrides()])
    before = snapshot(env.url)
    overrides = [*env.overrides(), f"--set=data.dir={data}"]
    refused = run_tuner("worker", "--storage", env.url, *overrides, cwd=env.root, timeout=120)
    one_error_line(refused.returncode, refused.stderr, str(corrupt), "data.skip_bad_files=true")
    done = run_tuner(
        "worker", "--storage", env.url, "--n-trials", "5", *overrides,
        "--set=data.skip_bad_files=true", cwd=env.root, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "unreadable files" in line]
    assert len(warning) == 1 and "warning: skipping 2 unreadable files" in warning[0], done.stderr
    assert str(corrupt) in warning[0] and str(text) in warning[0]
    assert snapshot(env.url)["trials"][:4] == before["trials"]
    trials = optuna.load_study(study_name="clothing", storage=env.url).trials
    assert len(trials) == 5 and trials[4].state == TrialState.COMPLETE


def _file_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A write past the limit fails with EFBIG, as on a full disk (Python ignores SIGXFSZ).
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_cache_write_that_fails_halfway_is_never_read(env: Env) -> None:
    """A full disk, then what a killed writer leaves, then a damaged entry: all recomputed."""
    url = f"journal://{env.root / 'journal.log'}"  # stays far below the file-size limit
    args = ["worker", "--storage", url, "--n-trials", "1", *env.overrides()]
    features = env.cache / "features"
    train_bytes = 40 * 2048 * 4  # 40 tiny train images x 2048 float32 features

    def run(limit: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            tuner_cmd(*args),
            cwd=env.root,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_file_limit(limit) if limit else None,
        )

    full = run(limit=train_bytes // 2)
    # Progress lines came first here; the error is still the one last line, with no traceback.
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert errors == [full.stderr.strip().splitlines()[-1]]
    assert "cannot write the feature cache" in errors[0] and "cache.enabled=false" in errors[0]
    (entry,) = [p for p in (features / "v2").iterdir() if p.is_dir() and p.name != "uses"]
    packs = entry / "packs"
    assert not any(packs.iterdir())  # no pack, and the half-written file is gone

    # A writer killed halfway leaves a temporary file; a damaged pack may lie there too.
    (packs / ".0001-a.npz.x1y2.tmp").write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    (packs / "0001-a.npz").write_bytes(b"PK\x03\x04 half a zip")

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in packs.iterdir()) != ["0001-a.npz"]
    assert not (packs / "0001-a.npz").exists() and not list(packs.glob(".*.tmp"))
    journal = open_storage(url, load_spec("clothing").storage)
    study = optuna.load_study(study_name="clothing", storage=journal)
    assert [t.user_attrs["cache"] for t in study.trials if t.state.is_finished()] == ["miss"]

    # A damaged pack among good ones: its rows are recomputed, never read as features.
    train = min(packs.glob("*.npz"))  # the first written: the train split's
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 3])
    args[args.index("--n-trials") + 1] = "2"
    again = run()
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="clothing", storage=journal)
    assert [t.user_attrs["cache"] for t in study.trials if t.state.is_finished()] == [
        "miss",
        "miss",
    ]
    assert sorted(np.load(p)["features"].shape for p in packs.glob("*.npz")) == [
        (20, 2048),
        (40, 2048),
    ]


# ---------------------------------------------------------------- 12: passwords


def _secret_url(port: int) -> str:
    return f"postgresql://user:{SECRET}@127.0.0.1:{port}/db"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["--storage", "env", "--debug"])
def test_passwords_never_appear(
    command: str, how: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _secret_url(closed_port())
    if how == "env":
        monkeypatch.setenv("TUNER_STORAGE", url)
        args = [command]
    else:
        args = [command, "--storage", url, *(["--debug"] if how == "--debug" else [])]
    code, out, err = cli(*args)
    assert SECRET not in out + err
    assert code == 2
    assert "user:***@127.0.0.1" in err
    if how != "--debug":
        one_error_line(code, err, "cannot open storage")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@host:notaport/db",
        f"foo://user:{SECRET}@host/db",
        f"postgresql://user:{SECRET}@with@at@127.0.0.1:1/db",
    ],
)
def test_passwords_of_bad_urls_never_appear(url: str, cli: Cli) -> None:
    code, out, err = cli("status", "--storage", url)
    one_error_line(code, err, "***")
    assert SECRET not in out + err


@pytest.mark.slow  # spawns processes
def test_passwords_stay_out_of_help_and_process_output(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _secret_url(closed_port())
    for args in (["worker", "--help"], ["status"], ["export", "--out", "x.json"]):
        done = run_tuner(*args, env={"TUNER_STORAGE": url}, timeout=60)
        assert SECRET not in done.stdout + done.stderr, args


def test_passwords_stay_out_of_a_live_server_session(cli: Cli) -> None:
    """PostgreSQL here trusts local users, so a URL with a password connects."""
    if (reason := _server_reachable(PG_URL)) is not None:
        pytest.skip(f"PostgreSQL not reachable: {reason}")
    url = PG_URL.replace("postgres@", f"postgres:{SECRET}@")
    name = unique_name("secret")
    make_study(url, name)
    for args in (["status"], ["export"], ["status", "--set", "study.name=nope"]):
        code, out, err = cli(*args, "--storage", url, "--set", f"study.name={name}")
        assert SECRET not in out + err, args
        assert code in (0, 2)


# ---------------------------------------------------------------- a real process


@pytest.mark.slow  # TensorFlow
def test_a_real_process_prints_one_line_and_no_tensorflow_log(
    tmp_path: Path, existing: str
) -> None:
    """Data and weights errors come before TensorFlow loads, so its log never shows."""
    data = make_images(tmp_path / "data")
    cases = [
        ["--set", f"data.dir={tmp_path / 'nowhere'}", "--set", "data.source="],
        ["--set", f"data.dir={data}", "--set", f"model.weights={tmp_path / 'w.weights.h5'}"],
        ["--set", "search.learning_rate.high=0.3"],
    ]
    for extra in cases:
        with unchanged(existing):
            done = run_tuner("worker", "--storage", existing, *extra, timeout=60)
        one_error_line(done.returncode, done.stderr)
        assert done.stdout == ""


# ---------------------------------------------------------------- 13: the user's own recipe

USER_RECIPES = """
def head(params, feature_dim, num_classes):
    import keras

    inputs = keras.Input((feature_dim,))
    x = keras.layers.Dense(params["units"])(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def not_a_model(params, feature_dim, num_classes):
    return {"layers": 3}


def wrong_classes(params, feature_dim, num_classes):
    import keras

    inputs = keras.Input((feature_dim,))
    return keras.Model(inputs, keras.layers.Dense(num_classes * 2)(inputs))


def unknown_name(params, feature_dim, num_classes):
    import keras

    inputs = keras.Input((feature_dim,))
    return keras.Model(inputs, keras.layers.Dense(params["classes"])(inputs))


def two_args(params, num_classes):
    return None


def shape_name(params, dims, num_classes):
    return None
"""


def user_project(root: Path, name: str, body: str = USER_RECIPES) -> Path:
    """A user's project folder holding package ``name`` with ``models.py``; returns the folder."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "models.py").write_text(body)
    return root


@pytest.mark.parametrize(
    ("recipe", "body", "needles"),
    [
        ("absent_pkg.models:head", None, ["cannot import module absent_pkg.models",
                                          "No module named 'absent_pkg'", "pip install"]),
        ("{pkg}.models:missing", None, ["has no function 'missing'", "head, not_a_model"]),
        ("{pkg}.models:two_args", None, ["two_args(params, num_classes)", "three arguments"]),
        ("{pkg}.models:shape_name", None, ["feature_dim or input_shape"]),
        ("{pkg}.models:head", "def head(:\n", ["SyntaxError", "fix the module"]),
        ("{pkg}.models:head", "import absent_dependency\n",
         ["No module named 'absent_dependency'", "install absent_dependency"]),
        ("{pkg}.models:head", "raise ValueError('bad config')\n", ["ValueError: bad config"]),
        ("{pkg}:head", None, ["has no function 'head'"]),
        ("{pkg}.models:", None, ["neither a built-in recipe", "module:function"]),
    ],
)  # fmt: skip
def test_a_broken_user_recipe_is_one_line_and_creates_no_study(
    recipe: str,
    body: str | None,
    needles: list[str],
    tmp_path: Path,
    existing: str,
    cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    pkg = unique_name("recipes")
    monkeypatch.chdir(user_project(tmp_path, pkg, body or USER_RECIPES))
    data = make_images(tmp_path / "data")
    with unchanged(existing):
        code, _, err = cli(
            "worker", "--storage", existing, "--set", f"model.recipe={recipe.format(pkg=pkg)}",
            "--set", f"data.dir={data}", "--set", "model.weights=none",
            "--set", "study.name=mine",
        )  # fmt: skip
    one_error_line(code, err, *needles)
    assert "mine" not in optuna.study.get_all_study_names(existing)  # no study was made


@pytest.mark.slow
def test_a_recipe_that_builds_a_wrong_model_is_one_line(tmp_path: Path, existing: str) -> None:
    """A real process: the recipe is built once before any trial; TF's start-up log stays out."""
    project = user_project(tmp_path, "mymodels")
    data = make_images(tmp_path / "data")
    cases = {
        "not_a_model": ["returned a dict, not a keras.Model"],
        "wrong_classes": ["output has shape (None, 4)", "the data has 2 classes"],
        "unknown_name": ["'classes'", "does not define", "[search.classes]"],
    }
    for function, needles in cases.items():
        with unchanged(existing):
            done = run_tuner(
                "worker", "--storage", existing,
                "--set", f"model.recipe=mymodels.models:{function}", "--set", f"data.dir={data}",
                "--set", "model.weights=none",
                "--set", "data.image_size=[71, 71]", "--set", "study.name=mine",
                cwd=project, timeout=120,
            )  # fmt: skip
        one_error_line(done.returncode, done.stderr, f"mymodels.models:{function}", *needles)
        assert done.stdout == ""
    assert "mine" not in optuna.study.get_all_study_names(existing)
