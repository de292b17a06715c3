"""``tuner cache list`` and ``tuner cache prune``, in-process and without TensorFlow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Cli
from tuner.training.feature_store import FeatureStore, Use

KEY = "0adfcd1285343f0e6f15fe102fee3c1d"


def _digest(i: int) -> str:
    return f"{i:064x}"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache with one layout-2 entry (10 images, 8 of them used by study 'one') and one
    layout-1 entry of an earlier version."""
    folder = tmp_path / "cache"
    store = FeatureStore(folder, KEY)
    store.create({"base": "xception", "weights": "none", "image_size": [71, 71]})
    store.add([_digest(i) for i in range(10)], np.ones((10, 4), np.float32))
    (tmp_path / "one.db").touch()
    use = Use.of("one", f"sqlite:///{tmp_path / 'one.db'}")
    store.record_use(use, {"train": [_digest(i) for i in range(6)],
                           "validation": [_digest(6), _digest(7)]})  # fmt: skip
    old = folder / "features" / ("ab" * 16)
    old.mkdir(parents=True)
    (old / "train.npz").write_bytes(bytes(4096))
    (old / "meta.json").write_text(json.dumps({"key": old.name}))
    (old.parent / f"{old.name}.lock").touch()
    return folder


def test_list_shows_entries_sizes_ages_and_studies(cli: Cli, cache: Path) -> None:
    code, out, err = cli("cache", "list", "--dir", str(cache))
    assert code == 0, err
    assert f"{KEY}  layout 2" in out and "xception, none, 71x71" in out
    assert "10 images, 8 used by a live study, last used 0 s ago" in out
    assert "used by study 'one' on sqlite:///" in out
    assert f"{'ab' * 16}  layout 1" in out and "`tuner cache prune` removes it" in out
    assert "written 0 s ago" in out and "2 entries," in out


def test_prune_dry_run_then_prune(cli: Cli, cache: Path) -> None:
    store = FeatureStore(cache, KEY)
    code, out, err = cli("cache", "prune", "--dir", str(cache), "--dry-run")
    assert code == 0, err
    assert "would remove" in out and "2 of its 10 rows unused; 8 rewritten" in out
    assert "layout 1 (whole-dataset entry)" in out
    assert len(store.index()) == 10 and (cache / "features" / ("ab" * 16)).is_dir()

    code, out, err = cli("cache", "prune", "--dir", str(cache))
    assert code == 0, err
    assert out.splitlines()[-1].startswith("removed 3 files or folders")
    assert sorted(store.index()) == [_digest(i) for i in range(8)]
    assert not (cache / "features" / ("ab" * 16)).exists()
    assert not (cache / "features" / f"{'ab' * 16}.lock").exists()

    code, out, _ = cli("cache", "prune", "--dir", str(cache))
    assert code == 0 and "nothing to prune" in out


def test_prune_older_than_drops_studies_not_run_lately(cli: Cli, cache: Path) -> None:
    code, out, _ = cli("cache", "prune", "--dir", str(cache), "--older-than", "1")
    assert code == 0 and "use record of study 'one'" not in out
    [record] = (cache / "features" / "v2" / "uses").glob("*.json")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "updated": data["updated"] - 3 * 86400}))
    code, out, _ = cli("cache", "prune", "--dir", str(cache), "--older-than", "2")
    assert code == 0 and "last used 3 d ago" in out and "no study uses it" in out
    assert not FeatureStore(cache, KEY).folder.exists()


def test_the_default_folder_is_tuner_cache_dir(
    cli: Cli, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_CACHE_DIR", str(cache))
    code, out, _ = cli("cache", "list")
    assert code == 0 and f"feature cache in {cache}:" in out
    monkeypatch.setenv("TUNER_CACHE_DIR", str(cache / "nowhere"))
    assert cli("cache", "list")[1].strip() == f"no feature cache entries in {cache / 'nowhere'}"
    code, out, _ = cli("cache", "prune")
    assert code == 0 and "nothing to prune" in out


def test_help_and_bad_options(cli: Cli) -> None:
    code, out, _ = cli("cache", "--help")
    assert code == 0 and "list" in out and "prune" in out
    code, out, _ = cli("cache", "prune", "--help")
    assert code == 0 and "--dry-run" in out and "--older-than" in out
    code, _, err = cli("cache", "prune", "--older-than", "-1")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_the_cache_command_loads_no_tensorflow(cache: Path) -> None:
    import subprocess

    code = (
        "import sys; from tuner.cli import main; main(['cache', 'list', '--dir', sys.argv[1]]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(cache)], check=True, capture_output=True)


def _decoded_split(cache: Path, key: str = "cd" * 16) -> Path:
    folder = cache / "decoded"
    folder.mkdir(parents=True)
    np.save(folder / f"{key}.npy", np.zeros((3, 4, 4, 3), np.float32))
    np.save(folder / f"{key}.labels.npy", np.zeros((3, 10), np.float32))
    (folder / f"{key}.lock").touch()
    return folder / f"{key}.npy"


def test_decoded_images_are_listed_and_pruned_unless_recent_or_being_written(
    cli: Cli, tmp_path: Path
) -> None:
    from filelock import FileLock

    cache = tmp_path / "cache"
    images = _decoded_split(cache)
    code, out, err = cli("cache", "list", "--dir", str(cache))
    assert code == 0, err
    assert f"{'cd' * 16}  decoded" in out and "3 images for the full pipeline" in out

    code, out, err = cli("cache", "prune", "--dir", str(cache), "--older-than", "1")
    assert code == 0, err
    assert images.exists() and "nothing to prune" in out  # read less than a day ago

    with FileLock(str(images.with_suffix(".lock"))):  # a worker decoding into it
        code, out, err = cli("cache", "prune", "--dir", str(cache))
    assert code == 0, err
    assert images.exists() and "a worker is decoding images into it" in out

    code, out, err = cli("cache", "prune", "--dir", str(cache))
    assert code == 0, err
    assert "a worker decodes them again" in out
    # The lock file stays: a worker may be about to take it.
    assert sorted(p.name for p in (cache / "decoded").iterdir()) == [f"{'cd' * 16}.lock"]
