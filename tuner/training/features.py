"""The frozen-feature cache (TF).

With a frozen base run in inference mode and no random augmentation, the base's
pooled output for an image is the same in every epoch of every trial. It is
computed once per dataset and base and reused; trials then train only the head,
whichever head recipe builds it.

An entry is a folder named by its key, holding ``SPLIT.npz`` files and
``meta.json``. One worker computes it under a file lock while the others wait;
every file is written to a temporary name and renamed, and ``meta.json`` is
written last, so an entry without it is incomplete and is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras

from tuner.assets.datasets import DatasetScan, load_split
from tuner.common.attrs import worker_name
from tuner.errors import CacheError
from tuner.recipes import BASES, HEAD, Recipe
from tuner.training.model import build_feature_extractor, weights_identity
from tuner.training.precision import extraction_precision
from tuner.training.settings import TrialSetup

# (split, images done, images in the split), called as the extraction goes
Progress = Callable[[str, int, int], None]


class ImageSource(Protocol):
    """Images and their one-hot labels from somewhere other than class folders.

    A data recipe's images (see :mod:`tuner.training.owndata`): ``fingerprint``
    is the recipe's, which promises to change whenever the data does.
    """

    def fingerprint(self) -> str: ...

    def count(self, split: str) -> int: ...

    def batches(self, split: str) -> Iterable[tuple[np.ndarray, np.ndarray]]: ...


__all__ = [
    "CACHE_VERSION",
    "FeatureSet",
    "ImageSource",
    "cache_dir",
    "cache_key",
    "cache_reason",
    "cached_features",
    "extract_features",
    "extraction_child",
    "extraction_process",
    "load_or_compute",
]

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# What a damaged entry raises on reading: a bad zip, a CRC mismatch, a short file, bad JSON.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True)
class FeatureSet:
    """Pooled features and one-hot labels of the dataset's splits."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    status: str  # "hit" or "miss"
    key: str


def cache_dir(setup: TrialSetup) -> Path:
    """``cache.dir``, else ``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner``."""
    if setup.cache.dir:
        return Path(setup.cache.dir).expanduser()
    if env := os.environ.get("TUNER_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "tuner"


def cache_reason(setup: TrialSetup, recipe: Recipe | None = None) -> str | None:
    """Why the cache cannot apply to this spec, or None when it can."""
    if not setup.cache.enabled:
        return "cache.enabled is false"
    if (recipe or setup.recipe).kind != HEAD:
        return f"recipe {setup.model.recipe!r} trains its whole network"
    data = setup.data_recipe
    if data is not None and data.fingerprint is None:
        return (
            f"data.recipe {data.name!r} gives no fingerprint (set "
            f"{data.name.partition(':')[2]}.fingerprint to a string that changes with the data)"
        )
    if setup.model.trainable_base:
        return "model.trainable_base is true, so the base changes while training"
    if setup.data.augment:
        return "data.augment is on, so the base sees a different image every epoch"
    return None


def cache_key(setup: TrialSetup, dataset_fingerprint: str) -> str:
    """The key: dataset content, base, weights, input size, preprocessing, Keras version,
    and the precision the base extracts in on this machine.

    The head does not count: every head recipe on the same base shares the features.
    """
    base = setup.recipe.base(setup.model.base) or BASES[setup.model.base]
    parts = {
        "version": CACHE_VERSION,
        "dataset": dataset_fingerprint,
        "base": base.identity,
        "weights": weights_identity(setup),
        "image_size": list(setup.data.image_size),
        "preprocessing": base.preprocessing,
        "keras": keras.__version__,
        "precision": extraction_precision(setup.model),  # bfloat16 features differ a little
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def extract_features(
    extractor: keras.Model,
    scan: DatasetScan | ImageSource,
    split: str,
    setup: TrialSetup,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the extractor over one split through Keras's compiled predict step.

    The pipeline is prefetched, and features and labels come from the same batches,
    so every image is decoded once. ``predict_on_batch`` reuses the model's traced
    predict function, the one ``predict`` uses, so no split traces the base again.
    ``progress`` is called after each batch with the split, the images done and the
    split's total.
    """
    import tensorflow as tf

    if isinstance(scan, DatasetScan):
        batches: Iterable[tuple[Any, Any]] = load_split(
            scan, split, setup.data.image_size, setup.data.batch_size
        ).prefetch(tf.data.AUTOTUNE)
    else:
        batches = scan.batches(split)
    features, labels = [], []
    done, total = 0, scan.count(split)
    for images, onehot in batches:
        features.append(extractor.predict_on_batch(images))
        labels.append(np.asarray(onehot))
        done += len(labels[-1])
        if progress is not None:
            progress(split, done, total)
    return (
        np.concatenate(features).astype(np.float32),
        np.concatenate(labels).astype(np.float32),
    )


def _write_atomic(path: Path, write: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)  # type: ignore[operator]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _discard_partial(entry: Path) -> None:
    """Mark the entry incomplete and drop what a killed writer left; the lock is held."""
    (entry / "meta.json").unlink(missing_ok=True)
    for tmp in entry.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _read_entry(
    entry: Path, splits: tuple[str, ...], key: str, *, quiet: bool = False
) -> FeatureSet | None:
    """The entry's features, or None when it is missing, incomplete or damaged."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        features, labels = {}, {}
        for split in splits:
            with np.load(entry / f"{split}.npz") as data:
                features[split], labels[split] = data["features"], data["labels"]
            if not len(features[split]) == len(labels[split]) == meta["counts"][split]:
                raise ValueError(f"{split}.npz does not hold {meta['counts'][split]} rows")
    except UNREADABLE:
        if not quiet:  # said once, by the look taken under the lock
            log.warning("feature cache entry %s is unreadable; recomputing it", entry)
        return None
    return FeatureSet(features, labels, "hit", key)


def cached_features(
    setup: TrialSetup, scan: DatasetScan, splits: tuple[str, ...] = ("train", "validation")
) -> FeatureSet | None:
    """The cache's features for the spec and dataset when the workers left them; never computes.

    ``scan`` must hold exactly the splits the workers scanned (its fingerprint is the key's).
    """
    if cache_reason(setup) is not None:
        return None
    key = cache_key(setup, scan.fingerprint())
    return _read_entry(cache_dir(setup) / "features" / key, splits, key, quiet=True)


def load_or_compute(
    setup: TrialSetup,
    scan: DatasetScan | ImageSource,
    splits: tuple[str, ...] = ("train", "validation"),
    *,
    on_compute: object = None,
    progress: Progress | None = None,
) -> FeatureSet:
    """The cached features for the spec and dataset, computing them once if needed.

    Args:
        setup: supplies the base, weights, input size and cache folder.
        scan: the validated dataset, or a data recipe's images.
        splits: the splits to cache.
        on_compute: called with a message before a (slow) extraction starts.
        progress: called during the extraction, see :func:`extract_features`.

    Raises:
        CacheError: when the cache folder cannot be created or written.
    """
    key = cache_key(setup, scan.fingerprint())
    entry = cache_dir(setup) / "features" / key
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(
            f"cannot create the feature cache folder {entry} ({e.strerror}); set cache.dir "
            "or TUNER_CACHE_DIR to a writable folder, or --set cache.enabled=false"
        ) from None
    if (found := _read_entry(entry, splits, key, quiet=True)) is not None:
        return found
    lock = FileLock(str(entry) + ".lock")
    holder = Path(str(entry) + ".holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another worker computes them: say so once, then wait for it
        if callable(on_compute):
            who = _read_holder(holder)
            on_compute(
                f"waiting for the frozen-base features that {who} computes into {entry}; "
                "each trial then trains only the head"
            )
        lock.acquire()
    try:
        # Another worker may have finished the entry while this one waited.
        if (found := _read_entry(entry, splits, key)) is not None:
            return found
        with contextlib.suppress(OSError):  # who computes, for the workers that wait
            holder.write_text(worker_name())
        _discard_partial(entry)
        threads = _spare_threads() if isinstance(scan, DatasetScan) else 0
        if callable(on_compute):
            using = f" with all {threads} CPU threads" if threads else ""
            on_compute(f"computing frozen-base features once into {entry}{using}")
        delegated = isinstance(scan, DatasetScan) and bool(threads)
        if delegated and not _compute_in_child(setup, scan, splits, entry, key, threads, progress):
            delegated = False  # extract here after all
        if delegated and (found := _read_entry(entry, splits, key)) is not None:
            return FeatureSet(found.features, found.labels, "miss", key)
        features, labels = _compute_entry(setup, scan, splits, entry, key, progress)
        keras.backend.clear_session()
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
    return FeatureSet(features, labels, "miss", key)


def _compute_entry(
    setup: TrialSetup,
    scan: DatasetScan | ImageSource,
    splits: tuple[str, ...],
    entry: Path,
    key: str,
    progress: Progress | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Extract every split's features and write the entry, ``meta.json`` last."""
    start = time.perf_counter()
    extractor = build_feature_extractor(setup)
    features, labels, counts = {}, {}, {}
    try:
        for split in splits:
            x, y = extract_features(extractor, scan, split, setup, progress)
            features[split], labels[split], counts[split] = x, y, len(x)
            _write_atomic(
                entry / f"{split}.npz", lambda f, x=x, y=y: np.savez(f, features=x, labels=y)
            )
        meta = {"key": key, "counts": counts, "seconds": time.perf_counter() - start}
        _write_atomic(entry / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        raise CacheError(
            f"cannot write the feature cache in {entry} ({e.strerror}); free disk space, "
            "set cache.dir to another folder, or --set cache.enabled=false"
        ) from None
    return features, labels


def _spare_threads() -> int:
    """The machine's CPU threads when this process was given fewer (a worker of a pool), else 0.

    A pool splits the cores among its workers for training; while one worker
    extracts the features, the others only wait for them, so the extraction gets
    every core, in a process of its own (TensorFlow's thread count is fixed once set).
    """
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mine = tf.config.threading.get_intra_op_parallelism_threads()
    return int(cores or 0) if 0 < mine < int(cores or 0) else 0


def _compute_in_child(
    setup: TrialSetup,
    scan: DatasetScan,
    splits: tuple[str, ...],
    entry: Path,
    key: str,
    threads: int,
    progress: Progress | None,
) -> bool:
    """Compute the entry in a process with ``threads`` CPU threads; False if it failed.

    The child reports each batch on its standard output, which goes to ``progress``;
    its other output is kept in a file and shown only if it fails. A signal that
    stops this worker (raised by ``progress``) stops the child too.
    """
    import subprocess

    job = entry.parent / f".{entry.name}.job-{os.getpid()}"
    errors = entry.parent / f".{entry.name}.stderr-{os.getpid()}"
    job.write_bytes(pickle.dumps((setup, scan, splits, entry, key)))
    command, env = extraction_process(job, threads)
    try:
        with errors.open("w") as err:
            child = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, env=env, text=True
            )
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    split, done, total = line.split()
                    if progress is not None:
                        progress(split, int(done), int(total))
                ok = child.wait() == 0
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        if not ok:
            tail = errors.read_text(errors="replace").strip().splitlines()[-3:]
            log.warning("the extraction process failed (%s); extracting here", " / ".join(tail))
        return ok
    finally:
        job.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)


def extraction_process(job: Path, threads: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an extraction process with ``threads`` CPU threads.

    ``job`` holds the pickled ``(setup, scan, splits, entry, key)`` it computes.
    """
    import sys

    env = {
        **os.environ,
        "TUNER_THREADS": str(threads),
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": str(min(2, threads)),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = "import sys; from tuner.training.features import extraction_child as c; c(sys.argv[1])"
    return [sys.executable, "-c", code, str(job)], env


def extraction_child(job: str) -> None:
    """The extraction process of :func:`_compute_in_child`: one line per batch on stdout."""
    import tensorflow as tf

    threads = int(os.environ["TUNER_THREADS"])
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    setup, scan, splits, entry, key = pickle.loads(Path(job).read_bytes())

    def report(split: str, done: int, total: int) -> None:
        print(split, done, total, flush=True)

    _compute_entry(setup, scan, splits, entry, key, report)


def _read_holder(holder: Path) -> str:
    try:
        return f"worker {holder.read_text().strip()}"
    except OSError:
        return "another worker"
