"""The frozen-feature cache (TF): pooled base features per image, computed once.

With a frozen base run in inference mode and no random augmentation, the base's
pooled output for an image is the same in every epoch of every trial. It is
computed once per image and model part and reused; trials then train only the
head, whichever head recipe builds it.

The rows live in a :class:`~tuner.training.feature_store.FeatureStore` (layout 2),
one per model part (:func:`cache_key`), under the SHA-256 of each image file's
bytes. A study's feature set is assembled from them, and only the missing images
are computed: one worker computes them under the key's file lock while the others
wait, and writes them as one pack renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from filelock import FileLock, Timeout

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras

from tuner.assets.datasets import DatasetScan
from tuner.common.attrs import worker_name
from tuner.errors import CacheError
from tuner.recipes import BASES
from tuner.training import extraction
from tuner.training.extraction import Progress
from tuner.training.feature_store import (
    FeatureStore,
    Use,
    cache_dir,
    cache_reason,
    file_digest,
    uses_lock,
)
from tuner.training.model import weights_identity
from tuner.training.precision import extraction_precision
from tuner.training.settings import TrialSetup

# An extraction process with every core pays for loading TensorFlow again (5-10 s); a pool
# worker's own share (one of two cores) takes about 0.3 s an image at 150x150, so the
# process pays from about 50 images on. Fewer (one image added) are computed here.
CHILD_MIN_IMAGES = 50


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
    "Progress",
    "Use",
    "cache_dir",
    "cache_key",
    "cache_key_parts",
    "cache_reason",
    "cached_features",
    "load_or_compute",
]

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: rows per image content hash (1: one entry per whole dataset)


@dataclass(frozen=True)
class FeatureSet:
    """Pooled features and one-hot labels of the dataset's splits."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    status: str  # "hit" or "miss"
    key: str
    computed: int = 0  # images whose features this call computed


def cache_key_parts(setup: TrialSetup) -> dict[str, Any]:
    """What an image's features depend on besides its bytes: the one place to add a field.

    The base, its weights, the input size, the preprocessing, the Keras version and the
    precision the base extracts in on this machine; the head does not count (every head
    recipe on a base shares the features), nor does the dataset (each image is a row of its
    own, under its content hash).
    """
    base = setup.recipe.base(setup.model.base) or BASES[setup.model.base]
    return {
        "version": CACHE_VERSION,
        "base": base.identity,
        "weights": weights_identity(setup),
        "image_size": list(setup.data.image_size),
        "preprocessing": base.preprocessing,
        "keras": keras.__version__,
        "precision": extraction_precision(setup.model),  # bfloat16 features differ a little
    }


def cache_key(setup: TrialSetup) -> str:
    """The model part's key: a SHA-256 over :func:`cache_key_parts`."""
    parts = json.dumps(cache_key_parts(setup), sort_keys=True).encode()
    return hashlib.sha256(parts).hexdigest()[:32]


@dataclass
class _Wanted:
    """A study's rows: digests and labels per split, and what computes each missing row."""

    digests: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # a path or an image

    def unique(self) -> set[str]:
        return {d for split in self.digests.values() for d in split}


def _array_digest(image: np.ndarray) -> str:
    """A data recipe's image: its content hash, dtype and shape included."""
    head = f"{image.dtype.str}{image.shape}".encode()
    return hashlib.sha256(head + np.ascontiguousarray(image).tobytes()).hexdigest()


def _wanted(scan: DatasetScan | ImageSource, splits: Sequence[str], known: Any) -> _Wanted:
    """The rows of ``splits``; images whose digest is not in ``known`` are kept to compute."""
    wanted = _Wanted({}, {})
    for split in splits:
        if isinstance(scan, DatasetScan):
            paths = scan.files[split]
            digests = [file_digest(p) for p in paths]
            index = {name: i for i, name in enumerate(scan.class_names)}
            classes = [index[p.relative_to(scan.root / split).parts[0]] for p in paths]
            labels = np.eye(len(index), dtype=np.float32)[classes]
            sources: dict[str, Any] = dict(zip(digests, paths, strict=True))
        else:
            digests, parts, sources = [], [], {}
            for images, onehot in scan.batches(split):
                for image in np.asarray(images):
                    digests.append(digest := _array_digest(image))
                    if digest not in known:
                        sources[digest] = image.copy()
                parts.append(np.asarray(onehot, dtype=np.float32))
            labels = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        wanted.digests[split], wanted.labels[split] = digests, labels
        wanted.sources[split] = {d: v for d, v in sources.items() if d not in known}
    return wanted


def _assemble(wanted: _Wanted, rows: dict[str, Any], key: str, computed: int) -> FeatureSet:
    features = {
        split: np.stack([rows[d] for d in digests]).astype(np.float32, copy=False)
        for split, digests in wanted.digests.items()
    }
    status = "miss" if computed else "hit"
    return FeatureSet(features, dict(wanted.labels), status, key, computed)


def _open_store(setup: TrialSetup) -> FeatureStore:
    store = FeatureStore(cache_dir(setup), cache_key(setup))
    try:
        store.create(cache_key_parts(setup))
    except OSError as e:
        raise CacheError(
            f"cannot create the feature cache folder {store.folder} ({e.strerror}); set "
            "cache.dir or TUNER_CACHE_DIR to a writable folder, or --set cache.enabled=false"
        ) from None
    return store


def cached_features(
    setup: TrialSetup, scan: DatasetScan, splits: tuple[str, ...] = ("train", "validation")
) -> FeatureSet | None:
    """The cache's features for the spec and dataset when every row is there; never computes."""
    if cache_reason(setup) is not None:
        return None
    store = FeatureStore(cache_dir(setup), cache_key(setup))
    index = store.index(quiet=True)
    wanted = _wanted(scan, splits, index)
    rows = store.read(wanted.unique(), index)
    if len(rows) < len(wanted.unique()):
        return None
    return _assemble(wanted, rows, store.key, 0)


def load_or_compute(
    setup: TrialSetup,
    scan: DatasetScan | ImageSource,
    splits: tuple[str, ...] = ("train", "validation"),
    *,
    on_compute: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    use: Use | None = None,
) -> FeatureSet:
    """The features of the spec's images, computing only those the cache lacks.

    Args:
        setup: supplies the base, weights, input size and cache folder.
        scan: the validated dataset, or a data recipe's images.
        splits: the splits to assemble.
        on_compute: called with a message before a (slow) extraction starts.
        progress: called during the extraction, see :data:`Progress`.
        use: the study that uses the features, recorded so that ``tuner cache
            prune`` keeps them.

    Raises:
        CacheError: when the cache folder cannot be created or written.
    """
    store = _open_store(setup)
    index = store.index(quiet=True)
    wanted = _wanted(scan, splits, index)
    rows = store.read(wanted.unique(), index)
    if len(rows) == len(wanted.unique()):
        _record(store, use, wanted, rows)
        return _assemble(wanted, rows, store.key, 0)
    lock = FileLock(str(store.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another worker computes them: say so once, then wait for it
        if on_compute is not None:
            on_compute(
                f"waiting for the frozen-base features that {store.holder()} "
                f"computes into {store.folder}; each trial then trains only the head"
            )
        lock.acquire()
    try:
        computed = _complete(setup, scan, splits, store, wanted, on_compute, progress)
        rows = store.read(wanted.unique(), store.index())
        if len(rows) < len(wanted.unique()):  # written a moment ago: the disk lost them
            raise OSError(5, "rows just written cannot be read back")
    except OSError as e:
        raise CacheError(
            f"cannot write the feature cache in {store.folder} ({e.strerror}); free disk "
            "space, set cache.dir to another folder, or --set cache.enabled=false"
        ) from None
    finally:
        store.holder_path.unlink(missing_ok=True)
        lock.release()
    _record(store, use, wanted, rows)
    return _assemble(wanted, rows, store.key, computed)


def _complete(
    setup: TrialSetup,
    scan: DatasetScan | ImageSource,
    splits: tuple[str, ...],
    store: FeatureStore,
    wanted: _Wanted,
    on_compute: Callable[[str], None] | None,
    progress: Progress | None,
) -> int:
    """Compute the rows still missing, the key's lock held; returns how many it computed."""
    index = store.index()  # another worker may have written them while this one waited
    missing = wanted.unique() - index.keys()
    if not missing:
        return 0
    store.drop_damaged()
    if any(d not in wanted.sources.get(s, {}) for s in splits for d in wanted.digests[s]
           if d in missing):  # fmt: skip
        wanted.sources = _wanted(scan, splits, index).sources  # pruned since the first look
    with contextlib.suppress(OSError):  # who computes, for the workers that wait
        store.holder_path.write_text(worker_name())
    todo: dict[str, dict[str, Any]] = {}
    for split in splits:  # a row in two splits is computed once
        todo[split] = {d: v for d, v in wanted.sources[split].items() if d in missing}
        missing -= todo[split].keys()
    count = sum(len(t) for t in todo.values())
    threads = extraction.spare_threads() if isinstance(scan, DatasetScan) else 0
    threads = threads if count >= CHILD_MIN_IMAGES else 0
    if on_compute is not None:
        cached = len(wanted.unique()) - count
        using = f" with all {threads} CPU threads" if threads else ""
        images = "image" if count == 1 else "images"
        what = "once" if not cached else f"of {count} new {images} ({cached} cached)"
        on_compute(f"computing frozen-base features {what} into {store.folder}{using}")
    if threads and extraction.compute_in_child(setup, todo, store, threads, progress):
        return count
    stored = store.index(quiet=True)  # what a failed child wrote before it failed
    todo = {split: {d: v for d, v in items.items() if d not in stored} for split, items in
            todo.items()}  # fmt: skip
    extraction.compute_rows(setup, todo, store, progress)
    keras.backend.clear_session()
    return count


def _record(store: FeatureStore, use: Use | None, wanted: _Wanted, rows: dict[str, Any]) -> None:
    """Record the study's use of its rows (so prune keeps them), putting back any pruned."""
    if use is None or store.is_recorded(use, wanted.digests):
        return
    try:
        with FileLock(str(uses_lock(store.cache_dir))):
            gone = sorted(wanted.unique() - store.index(quiet=True).keys())
            if gone:  # pruned since they were read: this worker holds them still
                store.add(gone, np.stack([rows[d] for d in gone]))
            store.record_use(use, wanted.digests)
    except OSError as e:
        log.warning("cannot record the feature cache's use in %s (%s)", store.folder, e)
