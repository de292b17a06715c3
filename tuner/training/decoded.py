"""Decoded images (TF): each split decoded and resized once, then read from memory every epoch.

Whole-model and full-pipeline trials used to decode and resize every JPEG in every
epoch of every trial. The images are now read once through
``keras.utils.image_dataset_from_directory`` (:func:`tuner.assets.datasets.load_split`,
so they are the very values Keras gives) and kept as float32, the dtype of its bilinear
resize: storing them as uint8 would round them and change what a trial learns. A
process-wide table keyed by the split's content keeps them for every trial of a worker.

Over ``data.memory_limit_mb`` (decoded images a process holds; 0 sends every split to
disk) a split goes instead to ``CACHE/decoded/<key>.npy``, memory-mapped, which every
worker on the machine shares: one decodes it under a file lock, writing to a temporary
name renamed into place, the labels first and the images last.

A training epoch draws its batches exactly as ``image_dataset_from_directory(shuffle=True,
seed=seed)`` does: the file list permuted by ``numpy.random.RandomState(seed)``, then a
``tf.data`` shuffle of ``8 * batch_size`` elements seeded with ``seed`` and redrawn each
epoch. Only the images come from memory instead of the JPEG files, so a trial sees the same
batches in the same order as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras
    import tensorflow as tf

from tuner.assets.datasets import DatasetScan, load_split
from tuner.errors import CacheError

__all__ = [
    "DECODED_VERSION",
    "DecodedSplit",
    "clear",
    "decoded_key",
    "decoded_split",
    "held_bytes",
    "training_batches",
    "validation_batches",
]

DECODED_VERSION = 1
_DECODE_BATCH = 64  # images decoded per step of the one pass; any size gives the same pixels


@dataclass
class DecodedSplit:
    """One split's images (raw RGB 0-255, float32) and one-hot labels, in file order.

    ``images`` is a NumPy array in memory, or a read-only ``numpy.memmap`` of the disk
    cache; a batch is copied out of it by NumPy either way (a ``tf.constant`` of it would
    take twice its size again).
    """

    key: str
    images: np.ndarray
    labels: np.ndarray
    where: str  # "memory" or "disk"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.images.shape[1:])) * 4

    def gather(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The images and labels at ``index`` (a batch of positions), inside ``tf.data``."""
        images, labels = tf.numpy_function(
            self._rows, [index], (tf.float32, tf.float32), stateful=False
        )
        images.set_shape((None, *self.images.shape[1:]))
        labels.set_shape((None, self.labels.shape[1]))
        return images, labels

    def _rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.images[index], dtype=np.float32), self.labels[index]


_HELD: dict[str, DecodedSplit] = {}  # key -> split; every trial of the process reads these
_IDENTITY: dict[tuple[Any, ...], str] = {}  # file stats -> content key, so a hit reads no file


def held_bytes() -> int:
    """Bytes of decoded images this process holds in memory."""
    return sum(s.nbytes for s in _HELD.values() if s.where == "memory")


def clear() -> None:
    """Forget every decoded split this process holds (tests; a long-lived process)."""
    _HELD.clear()
    _IDENTITY.clear()


def _stats(scan: DatasetScan, split: str) -> tuple[Any, ...]:
    stats = []
    for path in scan.files[split]:
        st = path.stat()
        stats.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stats)


def decoded_key(scan: DatasetScan, split: str, image_size: tuple[int, int]) -> str:
    """The key of a decoded split: its files' paths and contents, the classes, the size, how
    Keras decodes (RGB, bilinear, its version). An image that changes gives another key."""
    stats = (split, tuple(image_size), _stats(scan, split))
    if stats in _IDENTITY:
        return _IDENTITY[stats]
    digest = hashlib.sha256()
    parts = {
        "version": DECODED_VERSION,
        "split": split,
        "classes": list(scan.class_names),
        "image_size": list(image_size),
        "color_mode": "rgb",
        "interpolation": "bilinear",
        "dtype": "float32",
        "keras": keras.__version__,
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    for path in scan.files[split]:
        digest.update(str(path.relative_to(scan.root)).encode())
        digest.update(path.read_bytes())
    _IDENTITY[stats] = key = digest.hexdigest()[:32]
    return key


def decoded_split(
    scan: DatasetScan,
    split: str,
    image_size: tuple[int, int],
    *,
    memory_limit_mb: int,
    cache_root: Path,
) -> DecodedSplit:
    """One split decoded once per process (or once per machine, on disk).

    Args:
        scan: the checked dataset folder.
        split: ``"train"`` or ``"validation"``.
        image_size: ``data.image_size``.
        memory_limit_mb: ``data.memory_limit_mb``; a split that would take the
            process's decoded images above it is kept on disk instead.
        cache_root: the tuner cache folder; disk entries go under ``decoded/``.

    Raises:
        CacheError: the disk cache cannot be written.
    """
    key = decoded_key(scan, split, image_size)
    if key in _HELD:
        return _HELD[key]
    h, w = image_size
    size = scan.count(split) * h * w * 3 * 4
    if held_bytes() + size <= memory_limit_mb * 2**20:
        images = np.empty((scan.count(split), h, w, 3), np.float32)
        found = DecodedSplit(key, images, _decode_into(images, scan, split), "memory")
    else:
        found = _on_disk(scan, split, image_size, key, cache_root / "decoded")
    _HELD[key] = found
    return found


def _decode_into(out: np.ndarray, scan: DatasetScan, split: str) -> np.ndarray:
    """The one pass through ``image_dataset_from_directory``, in file order, into ``out``;
    returns the one-hot labels."""
    image_size = out.shape[1:3]
    ds = load_split(scan, split, image_size, _DECODE_BATCH).prefetch(tf.data.AUTOTUNE)
    labels, done = [], 0
    for x, y in ds:
        if done + len(x) > len(out):
            done += len(x)
            break
        out[done : done + len(x)] = x.numpy()
        done += len(x)
        labels.append(y.numpy())
    if done != len(out):  # images added or removed since the scan
        raise CacheError(
            f"{scan.root / split} no longer holds the {len(out)} images the scan found; leave "
            "the data folder as it is while workers start, then start them again"
        )
    return np.concatenate(labels).astype(np.float32)


def _on_disk(
    scan: DatasetScan, split: str, image_size: tuple[int, int], key: str, folder: Path
) -> DecodedSplit:
    """The split from ``folder/<key>.npy``, decoded there first by one worker of the machine."""
    images_path, labels_path = folder / f"{key}.npy", folder / f"{key}.labels.npy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f"{key}.lock")):
            if (found := _read(images_path, labels_path, scan.count(split))) is None:
                # missing, or damaged (labels alone: a writer died halfway): decode again
                images_path.unlink(missing_ok=True)
                for left in folder.glob(f".{key}.*"):  # temporary files of a killed writer
                    left.unlink(missing_ok=True)
                _write(scan, split, image_size, images_path, labels_path)
                found = _read(images_path, labels_path, scan.count(split))
    except OSError as e:
        raise CacheError(
            f"cannot keep decoded images in {folder} ({e.strerror or e}); point cache.dir or "
            "TUNER_CACHE_DIR at a writable folder, or raise data.memory_limit_mb to keep them "
            "in memory"
        ) from None
    if found is None:
        raise CacheError(f"the decoded images {images_path} cannot be read back; remove {folder}")
    with contextlib.suppress(OSError):  # its time is when it was last read: `tuner cache` ages
        os.utime(images_path)
    return DecodedSplit(key, found[0], found[1], "disk")


def _read(images_path: Path, labels_path: Path, count: int) -> tuple[Any, np.ndarray] | None:
    """The entry's images (memory-mapped) and labels, or None when missing or damaged."""
    try:
        labels = np.load(labels_path)
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    if images.shape[0] != count or labels.shape[0] != count or images.dtype != np.float32:
        return None
    return images, labels


def _write(
    scan: DatasetScan,
    split: str,
    image_size: tuple[int, int],
    images_path: Path,
    labels_path: Path,
) -> None:
    """Decode straight into a memory-mapped temporary file, then rename it into place."""
    h, w = image_size
    fd, tmp = tempfile.mkstemp(
        dir=images_path.parent, prefix=f".{images_path.stem}.", suffix=".npy"
    )
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (scan.count(split), h, w, 3))
        labels = _decode_into(out, scan, split)
        out.flush()
        del out
        _save_atomic(labels_path, labels)
        os.replace(tmp, images_path)  # last: an entry with its images is complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_batches(split: DecodedSplit, batch_size: int, seed: int) -> tf.data.Dataset:
    """A trial's training batches, in the order ``image_dataset_from_directory`` drew them.

    The file list is permuted once from ``seed`` (as Keras's ``index_directory`` does),
    then shuffled again each epoch in a buffer of ``8 * batch_size`` seeded with ``seed``.
    """
    order = list(range(len(split)))
    np.random.RandomState(seed).shuffle(order)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(order, np.int64))
    ds = ds.shuffle(buffer_size=batch_size * 8, seed=seed)
    return ds.batch(batch_size).map(split.gather).prefetch(tf.data.AUTOTUNE)


def validation_batches(split: DecodedSplit, batch_size: int) -> tf.data.Dataset:
    """The split's batches in file order, as ``image_dataset_from_directory`` gives them."""
    ds = tf.data.Dataset.range(len(split)).batch(batch_size)
    return ds.map(split.gather).prefetch(tf.data.AUTOTUNE)
