"""``tuner cache list`` and ``tuner cache prune``: the feature cache's entries (no TensorFlow).

An entry is one model part's rows (layout 2, see :mod:`tuner.training.feature_store`),
a whole-dataset entry that an earlier version wrote (layout 1, which this version
never reads), or one split's decoded images for the full pipeline
(:mod:`tuner.training.decoded`, ``decoded/<key>.npy``). Prune keeps exactly the rows
that a live study's use record names: a record goes when its study's SQLite or journal
file, or the study in it, is gone, or when it was last used more than ``--older-than``
days ago. Decoded images are a machine's copy that a worker makes again in seconds:
prune removes them (with ``--older-than``, those not read for that long).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from tuner.errors import CacheError
from tuner.training.feature_store import (
    UNREADABLE,
    FeatureStore,
    Use,
    layout_root,
    read_uses,
    uses_lock,
)

__all__ = [
    "CacheEntry",
    "PruneReport",
    "entry_lines",
    "list_entries",
    "prune",
    "prune_lines",
]

_LAYOUT1 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class CacheEntry:
    """One entry: its model part, rows, bytes, ages and the studies that use it."""

    path: Path
    layout: int
    model: str  # base, weights, input size
    rows: int
    used_rows: int
    size: int
    written: float  # newest file's time
    last_used: float | None
    studies: tuple[str, ...] = ()
    kind: str = "features"  # or "decoded": one split's decoded images


@dataclass
class PruneReport:
    """What prune removed (or would remove, with ``--dry-run``), each with why."""

    # path, bytes freed (a rewritten pack: its unused rows' share), why
    removed: list[tuple[Path, int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(size for _, size, _ in self.removed)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _newest(path: Path) -> float:
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return max(times, default=path.stat().st_mtime)


def _describe(store: FeatureStore) -> str:
    try:
        parts = json.loads((store.folder / "key.json").read_text())
        size = "x".join(str(n) for n in parts.get("image_size", []))
        return f"{parts.get('base', '?')}, {parts.get('weights', '?')}, {size}"
    except (OSError, ValueError):
        return "unknown model part"


def _live_records(
    cache_dir: Path, older_than_days: float | None, report: PruneReport | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """The use records whose study is still there (and recent enough); the rest go to report."""
    live = []
    for path, record in read_uses(cache_dir):
        why = _gone(record, older_than_days)
        if why is None:
            live.append((path, record))
        elif report is not None:
            report.removed.append((path, _size(path), f"use record of {_who(record)}: {why}"))
    return live


def _gone(record: dict[str, Any], older_than_days: float | None) -> str | None:
    """Why a use record no longer keeps its rows, or None when it does."""
    use = Use(str(record.get("study", "")), str(record.get("storage", "")))
    file = use.storage_file()
    if file is not None and not file.exists():
        return f"its storage {file} is gone"
    if file is not None and use.storage.startswith("sqlite:") and not _has_study(file, use.study):
        return f"{file} holds no study {use.study!r}"
    age = time.time() - float(record.get("updated", 0))
    if older_than_days is not None and age > older_than_days * 86400:
        return f"last used {_age(age)} ago"
    return None


def _has_study(file: Path, study: str) -> bool:
    """Whether a SQLite study file names ``study``; True when it cannot tell (opened read-only)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
            names = {row[0] for row in db.execute("SELECT study_name FROM studies")}
    except sqlite3.Error:
        return True
    return study in names


def _who(record: dict[str, Any]) -> str:
    return f"study {record.get('study')!r} on {record.get('storage')}"


def _stores(cache_dir: Path) -> list[FeatureStore]:
    root = layout_root(cache_dir)
    if not root.is_dir():
        return []
    return [FeatureStore(cache_dir, p.name) for p in sorted(root.iterdir())
            if p.is_dir() and p.name != "uses"]  # fmt: skip


def _layout1(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "features"
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and _LAYOUT1.match(p.name)]


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every entry in ``cache_dir``, layout 1 and 2; changes nothing."""
    records = [r for _, r in read_uses(cache_dir)]
    entries = []
    for store in _stores(cache_dir):
        index = store.index(quiet=True)
        mine = [r for r in records if r.get("key") == store.key]
        live = [r for r in mine if _gone(r, None) is None]
        used = {d for r in live for split in r.get("digests", {}).values() for d in split}
        last = max((float(r.get("updated", 0)) for r in mine), default=None)
        who = [_who(r) + ("" if r in live else f" (gone: {_gone(r, None)})") for r in mine]
        entries.append(CacheEntry(store.folder, 2, _describe(store), len(index),
                                  len(used & index.keys()), _size(store.folder),
                                  _newest(store.folder), last, tuple(sorted(who))))  # fmt: skip
    for old in _layout1(cache_dir):
        entries.append(CacheEntry(old, 1, "whole-dataset entry of an earlier version", 0, 0,
                                  _size(old), _newest(old), None))  # fmt: skip
    for images, files in _decoded(cache_dir):
        used = images.stat().st_mtime  # a worker touches the file each time it reads it
        size = sum(map(_size, files))
        what = "decoded images of one split"
        entries.append(CacheEntry(images, 0, what, _images_in(images), 0, size, used, used,
                                  kind="decoded"))  # fmt: skip
    return entries


def _decoded(cache_dir: Path) -> list[tuple[Path, list[Path]]]:
    """Each decoded split's images file with all its files (labels, lock)."""
    folder = cache_dir / "decoded"
    if not folder.is_dir():
        return []
    found = [p for p in sorted(folder.glob("*.npy")) if not p.name.endswith(".labels.npy")]
    return [(p, [p, *sorted(folder.glob(f"{p.stem}.*"))]) for p in found]


def _images_in(images: Path) -> int:
    try:
        return int(np.load(images, mmap_mode="r").shape[0])
    except (OSError, ValueError, EOFError):
        return 0


def _prune_decoded(cache_dir: Path, older_than_days: float | None, report: PruneReport) -> None:
    """Decoded splits (all, or those not read for ``older_than_days``), unless being written."""
    for images, files in _decoded(cache_dir):
        age = time.time() - images.stat().st_mtime
        if older_than_days is not None and age <= older_than_days * 86400:
            continue
        with _unless_busy(images.with_suffix(".lock"), report, f"{images}: a worker is "
                          "decoding images into it") as free:  # fmt: skip
            if free:  # the lock file stays: a worker may be about to take it
                why = "decoded images; a worker decodes them again when it needs them"
                labels = [f for f in files[1:] if f.suffix != ".lock"]
                report.removed.append((images, sum(map(_size, [images, *labels])), why))
                report.removed.extend((f, 0, "with its decoded images") for f in labels)


@contextlib.contextmanager
def _unless_busy(lock_path: Path, report: PruneReport, busy: str) -> Iterator[bool]:
    """Holds ``lock_path`` if no worker does (True); else notes ``busy`` as skipped (False)."""
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report.skipped.append(busy)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def prune(
    cache_dir: Path, *, dry_run: bool = False, older_than_days: float | None = None
) -> PruneReport:
    """Remove the rows and entries no live study uses, and layout-1 entries.

    Raises:
        CacheError: when another prune holds the cache, or a file cannot be removed.
    """
    report = PruneReport()
    _prune_decoded(cache_dir, older_than_days, report)
    if not layout_root(cache_dir).is_dir() and not _layout1(cache_dir):
        if not dry_run:
            _remove(report)
        return report
    lock = FileLock(str(uses_lock(cache_dir)))
    try:
        layout_root(cache_dir).mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=30)
    except Timeout:
        raise CacheError(
            f"another `tuner cache prune` holds {uses_lock(cache_dir)}; wait for it to end"
        ) from None
    except OSError as e:
        raise CacheError(
            f"cannot prune {cache_dir} ({e.strerror}); check its permissions"
        ) from None
    try:
        records = _live_records(cache_dir, older_than_days, report)
        for store in _stores(cache_dir):
            _prune_store(store, records, report, dry_run)
        for old in _layout1(cache_dir):
            why = "layout 1 (whole-dataset entry); this version keeps rows per image"
            report.removed.append((old, _size(old), why))
            for extra in old.parent.glob(f"{old.name}.*"):
                report.removed.append((extra, _size(extra), "its lock"))
        if not dry_run:
            _remove(report)
    finally:
        lock.release()
    return report


def _prune_store(
    store: FeatureStore,
    records: list[tuple[Path, dict[str, Any]]],
    report: PruneReport,
    dry_run: bool,
) -> None:
    """Drop the store's unused packs and rows; a store in use by a computing worker is skipped."""
    keep = {d for _, r in records if r.get("key") == store.key
            for split in r.get("digests", {}).values() for d in split}  # fmt: skip
    busy = f"{store.folder}: a worker is computing features into it"
    with _unless_busy(store.lock_path, report, busy) as free:
        if free:
            _prune_rows(store, keep, report, dry_run)


def _prune_rows(store: FeatureStore, keep: set[str], report: PruneReport, dry_run: bool) -> None:
    """The store's unused packs and rows, each with why (its lock held)."""
    if not keep:
        report.removed.append((store.folder, _size(store.folder), "no study uses it"))
        return
    index = store.index(quiet=True)
    for pack in store.packs():
        rows = [d for d, (p, _) in index.items() if p == pack and d in keep]
        count = _row_count(pack)
        if rows and len(rows) == count:
            continue
        why, freed = ("no study uses its rows" if count else "unreadable"), _size(pack)
        if rows:  # some rows used: they move to a smaller pack
            why = f"{count - len(rows)} of its {count} rows unused; {len(rows)} rewritten"
            freed = freed * (count - len(rows)) // count
            if not dry_run:
                _compact(store, pack, rows)
        report.removed.append((pack, freed, why))


def _row_count(pack: Path) -> int:
    try:
        with np.load(pack) as data:
            return len(data["digests"])
    except UNREADABLE:
        return 0


def _compact(store: FeatureStore, pack: Path, rows: list[str]) -> None:
    """Write the used rows of ``pack`` as a new pack (the old one is removed after)."""
    index = {d: (pack, i) for d, (p, i) in store.index(quiet=True).items() if p == pack}
    kept = store.read(rows, index)
    store.add(rows, np.stack([kept[d] for d in rows]))


def _remove(report: PruneReport) -> None:
    for path, _, _ in report.removed:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot remove {path} ({e.strerror}); check its permissions and run "
                "`tuner cache prune` again"
            ) from None


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit}"
    return f"{seconds:.0f} s"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def entry_lines(entries: list[CacheEntry], cache_dir: Path) -> list[str]:
    """``tuner cache list``'s text: one block per entry."""
    if not entries:
        return [f"no feature cache entries in {cache_dir}"]
    now, lines = time.time(), [f"feature cache in {cache_dir}:"]
    for e in entries:
        if e.kind == "decoded":
            lines.append(f"{e.path.stem}  decoded  {_mib(e.size)}  last read "
                         f"{_age(now - e.written)} ago  {e.model}")  # fmt: skip
            lines.append(f"    {e.rows} images for the full pipeline; `tuner cache prune` removes "
                         "it (a worker decodes them again in seconds)")  # fmt: skip
            continue
        lines.append(f"{e.path.name}  layout {e.layout}  {_mib(e.size)}  written "
                     f"{_age(now - e.written)} ago  {e.model}")  # fmt: skip
        if e.layout == 1:
            lines.append("    not read by this version: `tuner cache prune` removes it")
            continue
        used = f"last used {_age(now - e.last_used)} ago" if e.last_used else "never recorded"
        lines.append(f"    {e.rows} images, {e.used_rows} used by a live study, {used}")
        lines.extend(f"    used by {who}" for who in e.studies or ("no study",))
    total = sum(e.size for e in entries)
    lines.append(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}, {_mib(total)}")
    return lines


def prune_lines(report: PruneReport, cache_dir: Path, *, dry_run: bool) -> list[str]:
    """``tuner cache prune``'s text: each removal with why, then the total."""
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {path} ({_mib(size)} freed): {why}" for path, size, why in report.removed]
    lines += [f"skipped {what}" for what in report.skipped]
    if not report.removed:
        lines.append(f"nothing to prune in {cache_dir}: every entry is used by a study")
    else:
        lines.append(f"{verb} {len(report.removed)} files or folders, {_mib(report.freed)} freed")
    return lines
