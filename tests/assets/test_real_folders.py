"""Image folders as they come from real machines: hidden and AppleDouble files, Thumbs.db,
links that lead nowhere; the scan, the cache key and training agree on what is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from tuner.assets import datasets
from tuner.assets.datasets import load_split, scan_dataset
from tuner.errors import DataError


def _folder(root: Path) -> Path:
    for split in ("train", "validation"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(folder / f"{i}.jpg")
    return root


def test_hidden_and_non_image_files_are_left_out_of_the_scan_and_of_training(
    tmp_path: Path,
) -> None:
    root = _folder(tmp_path / "data")
    cls = root / "train" / "a"
    (cls / "._0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork
    Image.new("RGB", (8, 8)).save(cls / ".hidden.jpg")  # a valid image, but hidden
    (cls / "Thumbs.db").write_bytes(b"not an image")
    scan = scan_dataset(root)
    assert scan.count("train") == 4 and not scan.bad_files
    assert {p.name for p in scan.ignored} == {"._0.jpg", ".hidden.jpg"}
    before = scan.fingerprint()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(cls / ".hidden.jpg")
    assert scan_dataset(root).fingerprint() == before  # what is not trained on is not keyed
    images = sum(len(labels) for _, labels in load_split(scan, "train", (8, 8), 2))
    assert images == 4  # training reads what the scan counted, and nothing else
    views = list(datasets._VIEWS)
    assert views and all(v.is_dir() for v in views)
    datasets._remove_views()  # as at exit: no temporary folders are left behind
    assert not any(v.exists() for v in views)


def test_a_link_that_leads_nowhere_is_one_error_naming_it(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    loop_a, loop_b = root / "train" / "b" / "x.jpg", root / "train" / "b" / "y.jpg"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    with pytest.raises(DataError, match=r"x\.jpg is a symbolic link that cannot be followed"):
        scan_dataset(root)


def test_a_bad_image_names_the_cause(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    (root / "validation" / "a" / "2.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"2\.jpg is not a readable image \(UnidentifiedImage"):
        scan_dataset(root)
