"""The incremental feature cache: k changed images compute k rows, never a stale one."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Env
from tests.training.test_features import _spec, _store, fake_extraction, fake_row
from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.results.cache_entries import list_entries, prune
from tuner.training import features
from tuner.training.feature_store import Use, read_uses


@pytest.fixture
def data(env: Env, tmp_path: Path) -> Path:
    """A copy of the tiny data that a test may change."""
    return Path(shutil.copytree(env.data, tmp_path / "data"))


def _load(env: Env, data: Path, use: Use | None = None) -> features.FeatureSet:
    spec = _spec(env, **{"data.dir": str(data)})
    return features.load_or_compute(trial_setup(spec), scan_dataset(data), use=use)


def _reencoded(path: Path, quality: int) -> bytes:
    """The same picture saved again: other bytes, so another image to the cache."""
    out = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _rows_match_files(fs: features.FeatureSet, data: Path) -> None:
    scan = scan_dataset(data)
    for split in ("train", "validation"):
        expected = np.stack([fake_row(p) for p in scan.files[split]])
        np.testing.assert_array_equal(fs.features[split], expected)
        classes = [scan.class_names.index(p.parent.name) for p in scan.files[split]]
        assert fs.labels[split].argmax(axis=1).tolist() == classes


def test_a_changed_image_is_never_a_stale_hit(
    env: Env, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_extraction(monkeypatch)
    first = _load(env, data)
    assert first.computed == 60
    image = sorted((data / "train").rglob("*.jpg"))[5]
    image.write_bytes(_reencoded(image, 50))  # same name, same picture, other bytes
    again = _load(env, data)
    assert again.status == "miss" and again.computed == 1 and calls[-1] == 1
    _rows_match_files(again, data)
    assert not np.array_equal(again.features["train"], first.features["train"])


@pytest.mark.parametrize("k", [1, 3])
def test_adding_removing_or_changing_k_images_computes_k(
    env: Env, data: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    calls = fake_extraction(monkeypatch)
    _load(env, data)
    images = sorted((data / "train").rglob("*.jpg"))
    for i, image in enumerate(images[:k]):  # added: new files, new bytes
        (image.parent / f"added-{i}.jpg").write_bytes(_reencoded(image, 40))
    before = len(calls)
    added = _load(env, data)
    assert (added.computed, calls[before:]) == (k, [k])
    assert len(added.labels["train"]) == 40 + k
    _rows_match_files(added, data)

    for image in images[-k:]:  # removed: nothing to compute, a hit
        image.unlink()
    removed = _load(env, data)
    assert (removed.status, removed.computed, len(calls)) == ("hit", 0, before + 1)
    _rows_match_files(removed, data)

    for image in images[k : 2 * k]:  # changed in place
        image.write_bytes(_reencoded(image, 60))
    changed = _load(env, data)
    assert (changed.computed, calls[before + 1 :]) == (k, [k])
    _rows_match_files(changed, data)
    assert _load(env, data).status == "hit"


def test_the_same_bytes_twice_are_computed_once(
    env: Env, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_extraction(monkeypatch)
    image = sorted((data / "train").rglob("*.jpg"))[0]
    shutil.copy(image, image.with_name("copy.jpg"))
    fs = _load(env, data)
    assert fs.computed == sum(calls) == 60  # 61 files, 60 distinct images
    _rows_match_files(fs, data)


class _Arrays:
    """A data recipe's images: (images, one-hot) batches from arrays."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def fingerprint(self) -> str:
        return "test"

    def count(self, split: str) -> int:
        return len(self.images)

    def batches(self, split: str):  # type: ignore[no-untyped-def]
        for i in range(0, len(self.images), 4):
            part = self.images[i : i + 4]
            yield part, np.eye(2, dtype=np.float32)[np.arange(i, i + len(part)) % 2]


def test_a_data_recipes_images_are_cached_per_image(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_extraction(monkeypatch)
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3)).astype(np.uint8)
    setup = trial_setup(_spec(env))
    first = features.load_or_compute(setup, _Arrays(images))
    assert first.computed == 10  # both splits hold the same images
    images[3] += 1
    again = features.load_or_compute(setup, _Arrays(np.concatenate([images, images[:1] + 2])))
    assert (again.computed, calls[-1]) == (2, 2)
    np.testing.assert_array_equal(again.features["validation"][3], fake_row(images[3]))


def test_prune_keeps_what_studies_use_and_drops_replaced_images(
    env: Env, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_extraction(monkeypatch)
    db = env.root / "one.db"
    db.touch()  # the study's storage file exists (not a SQLite file yet: kept)
    use = Use.of("one", f"sqlite:///{db}")
    _load(env, data, use)
    image = sorted((data / "train").rglob("*.jpg"))[0]
    image.write_bytes(_reencoded(image, 30))
    _load(env, data, use)  # the study's record now names the new image, not the old
    store = _store(_spec(env, **{"data.dir": str(data)}))
    assert len(store.index()) == 61

    report = prune(env.cache, dry_run=True)
    assert len(store.index()) == 61 and [why for *_, why in report.removed] == [
        "1 of its 40 rows unused; 39 rewritten"
    ]
    prune(env.cache)
    assert len(store.index()) == 60
    assert _load(env, data, use).status == "hit"
    [entry] = list_entries(env.cache)
    assert (entry.rows, entry.used_rows) == (60, 60) and entry.studies[0].startswith("study 'one'")

    db.unlink()  # the study is gone: so are its features
    [(path, _, why)] = prune(env.cache).removed[:1]
    assert "is gone" in why and not path.exists()
    assert not store.folder.exists() and not read_uses(env.cache)


def test_a_row_pruned_while_a_worker_read_it_is_put_back(
    env: Env, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that read rows no record kept yet writes them back before its record."""
    fake_extraction(monkeypatch)
    _load(env, data)  # no study recorded: prune would remove everything
    real_read = features.FeatureStore.read

    def read_then_prune(self, digests, index):  # type: ignore[no-untyped-def]
        rows = real_read(self, digests, index)
        prune(env.cache)
        return rows

    monkeypatch.setattr(features.FeatureStore, "read", read_then_prune)
    (env.root / "two.db").touch()
    fs = _load(env, data, Use.of("two", f"sqlite:///{env.root / 'two.db'}"))
    monkeypatch.setattr(features.FeatureStore, "read", real_read)
    assert fs.status == "hit"
    assert len(_store(_spec(env, **{"data.dir": str(data)})).index()) == 60
    assert _load(env, data).computed == 0


RACER = """
import json, sys, time
from pathlib import Path
import numpy as np
from tuner.assets.datasets import scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.training import extraction, features
from tests.training.test_features import fake_row

barrier, me = Path(sys.argv[1]), sys.argv[2]
spec = load_spec("clothing", sys.argv[3:])
scan = scan_dataset(spec.data.dir)
def extract(_e, images, _s, _r=None):
    time.sleep(0.5)  # long enough for the other process to come and wait
    return np.stack([fake_row(p) for p in images])
extraction.build_feature_extractor = lambda _setup: object()
extraction.extract_features = extract
(barrier / f"ready-{me}").touch()
while len(list(barrier.glob("ready-*"))) < 2:
    time.sleep(0.02)
fs = features.load_or_compute(trial_setup(spec), scan)
for split in ("train", "validation"):
    assert np.array_equal(fs.features[split], np.stack([fake_row(p) for p in scan.files[split]]))
print(json.dumps({"computed": fs.computed}))
"""


@pytest.mark.slow  # two processes that import Keras
def test_two_studies_on_one_base_at_once_compute_each_image_once(
    env: Env, data: Path, tmp_path: Path
) -> None:
    """A study whose data is another's plus two images, started at the same moment."""
    bigger = Path(shutil.copytree(data, tmp_path / "bigger"))
    for i, image in enumerate(sorted((bigger / "train").rglob("*.jpg"))[:2]):
        (image.parent / f"new-{i}.jpg").write_bytes(_reencoded(image, 45))
    procs = []
    for me, folder in enumerate((data, bigger)):
        sets = [s.removeprefix("--set=") for s in env.overrides(**{"data.dir": str(folder)})]
        procs.append(subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(me), *sets],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err for _, err in outs)
    computed = sorted(json.loads(out.strip().splitlines()[-1])["computed"] for out, _ in outs)
    assert computed in ([2, 60], [0, 62])  # whichever came first; never an image twice
