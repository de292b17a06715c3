"""The feature cache on disk, layout 2: features per image content hash (no TensorFlow).

A base's pooled output for an image depends only on the image's bytes and on the
model part (base, weights, input size, preprocessing, Keras version). So the cache
is one folder per model part, ``features/v2/<key>/``, holding *packs*: immutable
``.npz`` files of rows, each row one image's features under the SHA-256 of the
image file's bytes. A study's feature set is assembled from the rows it needs;
adding, removing or changing k images computes k rows, written as one new pack.

A changed image has another hash, so it is never a stale hit; a row whose image
left the data stays until ``tuner cache prune``, which keeps only the rows that a
study's *use record* (``features/v2/uses/<id>.json``, written by its workers)
names. Packs are written to a temporary name and renamed, under the key's file
lock; use records and pruning take ``features/v2/uses.lock``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from filelock import FileLock, Timeout

from tuner.recipes import HEAD, Recipe
from tuner.storages.storage import redact_url
from tuner.training.settings import TrialSetup

__all__ = [
    "LAYOUT",
    "UNREADABLE",
    "FeatureStore",
    "Use",
    "busy_store",
    "cache_dir",
    "cache_reason",
    "default_cache_dir",
    "file_digest",
    "layout_root",
    "read_uses",
    "uses_lock",
    "write_atomic",
]

log = logging.getLogger(__name__)
LAYOUT = 2
# What a damaged pack raises on reading: a bad zip, a CRC mismatch, a short file, bad JSON.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
REFRESH_S = 3600.0  # a use record's "last used" is rewritten at most once an hour


@dataclass(frozen=True)
class Use:
    """Who uses a feature set: a study and where it is stored (password hidden)."""

    study: str
    storage: str

    def record_id(self) -> str:
        return hashlib.sha256(f"{self.study}\0{self.storage}".encode()).hexdigest()[:24]

    @classmethod
    def of(cls, study: str, url: str) -> Use:
        """A study at a storage URL; a relative SQLite or journal file is made absolute."""
        for prefix in ("sqlite:///", "journal://"):
            path = url.removeprefix(prefix)
            if url.startswith(prefix) and path and not path.startswith((":memory:", "file:")):
                url = prefix + str(Path(path).expanduser().absolute())
        return cls(study, redact_url(url))

    def storage_file(self) -> Path | None:
        """The file of a SQLite or journal storage; None for a server."""
        for prefix in ("sqlite:///", "journal://"):
            if self.storage.startswith(prefix):
                return Path(self.storage.removeprefix(prefix).split("?")[0])
        return None


def default_cache_dir() -> Path:
    """``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner`` (``~/.cache/tuner``)."""
    if env := os.environ.get("TUNER_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "tuner"


def cache_dir(setup: TrialSetup) -> Path:
    """``cache.dir``, else ``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner``."""
    if setup.cache.dir:
        return Path(setup.cache.dir).expanduser()
    return default_cache_dir()


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


def layout_root(cache_dir: Path) -> Path:
    """The folder of every layout-2 entry and use record."""
    return cache_dir / "features" / f"v{LAYOUT}"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: an image's identity in the cache."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, sync: bool = True) -> None:
    """Write through a temporary file renamed into place, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureStore:
    """One model part's rows: ``features/v2/<key>/`` with ``key.json`` and ``packs/``."""

    def __init__(self, cache_dir: Path, key: str) -> None:
        self.key = key
        self.cache_dir = cache_dir
        self.folder = layout_root(cache_dir) / key
        self.lock_path = self.folder.parent / f"{key}.lock"
        self.holder_path = self.folder.parent / f"{key}.holder"

    def holder(self) -> str:
        """Who computes into the store now, as the waiting workers name it."""
        try:
            return f"worker {self.holder_path.read_text().strip()}"
        except OSError:
            return "another worker"

    def create(self, parts: dict[str, Any]) -> None:
        """Make the folders, and ``key.json`` (what the key stands for, for ``tuner cache``).

        Raises:
            OSError: when the folder cannot be made or written.
        """
        (self.folder / "packs").mkdir(parents=True, exist_ok=True)
        meta = self.folder / "key.json"
        if not meta.is_file():
            data = json.dumps({"layout": LAYOUT, **parts}, sort_keys=True).encode()
            write_atomic(meta, lambda f: f.write(data))

    def packs(self) -> list[Path]:
        """The packs, oldest first (their names start with the time they were written)."""
        return sorted((self.folder / "packs").glob("*.npz"))

    def index(self, *, quiet: bool = False) -> dict[str, tuple[Path, int]]:
        """Where each stored row is: digest -> (pack, row). Damaged packs are left out."""
        where: dict[str, tuple[Path, int]] = {}
        for pack in self.packs():
            try:
                with np.load(pack) as data:
                    digests = data["digests"]
            except FileNotFoundError:
                continue  # pruned or compacted since it was listed
            except UNREADABLE:
                if not quiet:
                    log.warning("feature cache pack %s is unreadable; recomputing its rows", pack)
                continue
            for row, digest in enumerate(digests.astype(str)):
                where.setdefault(digest, (pack, row))
        return where

    def read(self, digests: Iterable[str], index: dict[str, tuple[Path, int]]) -> dict[str, Any]:
        """The rows of ``digests`` found in ``index``; a pack that fails to read gives none."""
        by_pack: dict[Path, list[str]] = {}
        for digest in set(digests):
            if digest in index:
                by_pack.setdefault(index[digest][0], []).append(digest)
        rows: dict[str, Any] = {}
        for pack, wanted in by_pack.items():
            try:
                with np.load(pack) as data:
                    features = data["features"]
            except UNREADABLE:
                continue
            for digest in wanted:
                rows[digest] = features[index[digest][1]]
        return rows

    def add(self, digests: Sequence[str], features: np.ndarray) -> Path | None:
        """Write ``features`` (one row per digest) as a new pack; None when there are none."""
        if not len(digests):
            return None
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.npz"
        pack = self.folder / "packs" / name
        pack.parent.mkdir(parents=True, exist_ok=True)  # pruned away since it was made
        keys = np.asarray(digests, dtype="S64")
        rows = np.asarray(features, dtype=np.float32)
        write_atomic(pack, lambda f: np.savez(f, digests=keys, features=rows))
        return pack

    def drop_damaged(self) -> None:
        """Remove unreadable packs and what killed writers left; the key's lock is held."""
        for tmp in (self.folder / "packs").glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for pack in self.packs():
            try:
                with np.load(pack) as data:
                    if len(data["digests"]) != len(data["features"]):
                        raise ValueError("row counts differ")
            except FileNotFoundError:
                continue
            except UNREADABLE:
                pack.unlink(missing_ok=True)

    def use_path(self, use: Use) -> Path:
        return layout_root(self.cache_dir) / "uses" / f"{use.record_id()}.json"

    def is_recorded(self, use: Use, digests: dict[str, list[str]]) -> bool:
        """Whether ``use``'s record names these rows already, and was written within the hour."""
        old = _read_json(self.use_path(use))
        if old is None or time.time() - float(old.get("updated", 0)) >= REFRESH_S:
            return False
        return old.get("key") == self.key and old.get("digests") == digests

    def record_use(self, use: Use, digests: dict[str, list[str]]) -> None:
        """Record that ``use`` needs these rows (per split), replacing its earlier record.

        The caller holds the uses lock and has checked that every row is stored.
        """
        path = self.use_path(use)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"study": use.study, "storage": use.storage, "key": self.key,
                  "updated": time.time(), "digests": digests}  # fmt: skip
        data = json.dumps(record).encode()
        write_atomic(path, lambda f: f.write(data), sync=False)


def busy_store(cache_dir: Path, parts: dict[str, Any]) -> FeatureStore | None:
    """A model part whose ``key.json`` holds ``parts`` and whose lock another process holds.

    Read without TensorFlow, so that a worker can wait for another worker's extraction
    before it loads TensorFlow; ``parts`` may be a subset of the key's.
    """
    root = layout_root(cache_dir)
    for meta in sorted(root.glob("*/key.json")) if root.is_dir() else []:
        found = _read_json(meta)
        if found is None or any(found.get(k) != v for k, v in parts.items()):
            continue
        store = FeatureStore(cache_dir, meta.parent.name)
        lock = FileLock(str(store.lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return store
        lock.release()
    return None


def uses_lock(cache_dir: Path) -> Path:
    """The lock that use records and ``tuner cache prune`` take."""
    return layout_root(cache_dir) / "uses.lock"


def read_uses(cache_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable use record, with its file."""
    found = []
    for path in sorted((layout_root(cache_dir) / "uses").glob("*.json")):
        if (record := _read_json(path)) is not None:
            found.append((path, record))
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
