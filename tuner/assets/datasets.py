"""Image folders: validation, content fingerprints, loading, and dataset downloads.

Scanning and downloading need no TensorFlow; only :func:`load_split` imports it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from tuner.common.paths import nearest_existing
from tuner.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "DATASETS",
    "DatasetScan",
    "DatasetSource",
    "download_dataset",
    "load_split",
    "scan_dataset",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass(frozen=True)
class DatasetSource:
    """A public dataset that tuner can download."""

    url: str
    folder: str  # the dataset's folder inside the archive
    license: str


DATASETS: dict[str, DatasetSource] = {
    "clothing": DatasetSource(
        url="https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip",
        folder="clothing-dataset-small-master",
        license="CC0",
    ),
}


@dataclass(frozen=True)
class DatasetScan:
    """What a dataset folder holds, after validation."""

    root: Path
    class_names: tuple[str, ...]
    files: dict[str, tuple[Path, ...]]  # split -> good image files, sorted
    bad_files: tuple[Path, ...] = field(default=())
    # Files Keras would read that the scan leaves out (hidden ones, ``._x.jpg`` AppleDouble):
    # training then reads a view of the scanned files only, as the cache key counts them.
    ignored: tuple[Path, ...] = field(default=())

    def count(self, split: str) -> int:
        return len(self.files[split])

    def fingerprint(self) -> str:
        """SHA-256 over every image's relative path and content."""
        digest = hashlib.sha256()
        for split in sorted(self.files):
            for path in self.files[split]:
                digest.update(str(path.relative_to(self.root)).encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_bad_image(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or None when it is one."""
    try:
        with Image.open(path) as image:
            # Decode every byte (a truncated JPEG passes verify()), at 1/8 scale for speed.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except PermissionError:
        return "permission denied"
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        return type(e).__name__ if isinstance(e, UnidentifiedImageError) else str(e) or "bad data"
    return None


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """A class folder's image files, and those Keras would read that are left out (hidden).

    Files that are not images by name (``Thumbs.db``, ``notes.txt``) are skipped, as Keras
    skips them. A link that leads nowhere (or to itself) is an error naming it.
    """
    images, hidden = [], []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_symlink() and not path.exists():
            try:
                path.stat()
                cause = "it leads nowhere"
            except OSError as e:
                cause = e.strerror or str(e)
            raise DataError(
                f"{path} is a symbolic link that cannot be followed ({cause}); remove it or "
                "point it at an image"
            )
        if not path.is_file():
            continue
        (
            hidden if any(p.startswith(".") for p in path.relative_to(folder).parts) else images
        ).append(path)
    return images, hidden


def scan_dataset(
    root: str | Path,
    splits: tuple[str, ...] = ("train", "validation"),
    *,
    skip_bad_files: bool = False,
    decode: bool = True,
) -> DatasetScan:
    """Validate a dataset folder: splits present, same classes, readable images.

    ``decode=False`` skips decoding every image (about 2 s for the clothing data),
    for a folder that was just checked with it, such as by a pool's parent.

    Raises:
        DataError: naming the folder, split, class or file that is wrong.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        where = "" if root.is_absolute() else f" ({root.absolute()})"
        raise DataError(
            f"data folder {root}{where} {what}; set data.dir to a folder with "
            f"{' and '.join(s + '/' for s in splits)} (or run "
            f"`tuner data download clothing --dest {root}`)"
        )
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise DataError(
            f"data folder {root} has no {missing[0]}/ split; it needs "
            f"{', '.join(s + '/' for s in splits)} each with one folder per class"
        )
    classes = {s: _class_dirs(root / s) for s in splits}
    reference = classes[splits[0]]
    if not reference:
        raise DataError(f"{root / splits[0]} has no class folders; put one folder per class in it")
    for split in splits[1:]:
        if classes[split] != reference:
            only_a = sorted(set(reference) - set(classes[split]))
            only_b = sorted(set(classes[split]) - set(reference))
            raise DataError(
                f"class folders differ between {splits[0]}/ and {split}/ in {root}: only in "
                f"{splits[0]}/: {only_a or 'none'}, only in {split}/: {only_b or 'none'}; "
                "make both splits hold the same classes"
            )
    files: dict[str, tuple[Path, ...]] = {}
    bad: list[tuple[Path, str]] = []
    ignored: list[Path] = []
    for split in splits:
        good: list[Path] = []
        for name in reference:
            folder = root / split / name
            entries, hidden = _entries(folder)
            ignored += hidden
            if not entries:
                raise DataError(
                    f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add "
                    "images or remove the folder"
                )
            for path in entries:
                reason = _is_bad_image(path) if decode else None
                if reason is None:
                    good.append(path)
                else:
                    bad.append((path, reason))
        files[split] = tuple(good)
    if bad and not skip_bad_files:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{bad[0][0]} is not a readable image ({bad[0][1]}){more}; remove or fix it, or "
            "set data.skip_bad_files=true to skip bad files with a warning"
        )
    return DatasetScan(root, tuple(reference), files, tuple(p for p, _ in bad), tuple(ignored))


_VIEWS: list[Path] = []  # removed when the process exits


@atexit.register
def _remove_views() -> None:
    for view in _VIEWS:
        shutil.rmtree(view, ignore_errors=True)


def _clean_view(scan: DatasetScan, split: str) -> Path:
    """A folder of links to the good images of one split, for when files are left out.

    It lives in the system's temporary folder until the process exits.
    """
    view = Path(tempfile.mkdtemp(prefix=f"tuner-{split}-"))
    _VIEWS.append(view)
    for path in scan.files[split]:
        target = view / path.relative_to(scan.root / split)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), target)
    return view


def load_split(
    scan: DatasetScan,
    split: str,
    image_size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """One split as a batched ``tf.data.Dataset`` of (raw RGB 0-255 images, one-hot labels)."""
    import keras

    directory = scan.root / split
    if scan.bad_files or scan.ignored:
        directory = _clean_view(scan, split)
    return keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="categorical",
        class_names=list(scan.class_names),
        image_size=tuple(image_size),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        verbose=False,
    )


def download_dataset(
    name: str,
    dest: str | Path,
    *,
    url: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    offline: str = "",
) -> Path:
    """Download and unpack a known dataset into ``dest``; returns the dataset folder.

    Args:
        name: a key of :data:`DATASETS`, such as ``"clothing"``.
        dest: the folder to create; it must not exist yet or be empty.
        url: another address of the same archive (a mirror, or a local server).
        progress: called with (bytes so far, total bytes or None).
        offline: what to do when the download fails, in the caller's options;
            by default, those of ``tuner data download``.

    Raises:
        DataError: for an unknown name, a failed download or a bad archive; the
            message names the folder, the URL, and the offline options.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    source = DATASETS[name]
    url = url or source.url
    dest = Path(dest)
    try:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            what = "is a file" if not dest.is_dir() else "exists and is not empty"
            raise DataError(f"{dest} {what}; remove it or pick another --dest")
        dest.parent.mkdir(parents=True, exist_ok=True)
        offline = offline or (
            f"copy the dataset into {dest} by hand, or give a reachable copy of the archive "
            "with --url URL"
        )
        return _download_into(dest, url, source.folder, progress, offline)
    except OSError as e:
        blocker = nearest_existing(dest.parent)
        reason = f"{blocker} is a file" if blocker and not blocker.is_dir() else e.strerror or e
        raise DataError(
            f"cannot create {dest} ({reason}); pick a writable folder for --dest"
        ) from None


def _download_into(
    dest: Path,
    url: str,
    folder: str,
    progress: Callable[[int, int | None], None] | None,
    offline: str,
) -> Path:
    """Fetch and unpack next to ``dest``, then move the dataset into place in one rename."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".tuner-download-") as tmp:
        archive = Path(tmp) / "archive.zip"
        _fetch(url, archive, dest, progress, offline)
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(tmp) / "unpacked")
        except zipfile.BadZipFile:
            raise DataError(f"{url} did not return a zip archive; check the URL") from None
        unpacked = Path(tmp) / "unpacked" / folder
        if not unpacked.is_dir():
            raise DataError(f"the archive from {url} has no {folder}/ folder")
        if dest.exists():
            dest.rmdir()
        shutil.move(str(unpacked), dest)
    return dest


def _fetch(
    url: str,
    archive: Path,
    dest: Path,
    progress: Callable[[int, int | None], None] | None,
    offline: str,
) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response, archive.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download the dataset for {dest} from {url} ({reason}); offline, {offline}"
        ) from None
