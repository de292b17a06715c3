"""No leftovers: a worker that fails before its study exists removes the files it created.

A first run that stops on its data or weights would otherwise leave a SQLite
file without a study, its lock and WAL files, or an empty journal, which make
the next reader believe there is a study there. Files that existed before the
command, and any storage that holds a study, are never touched.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tuner.storages.storage import journal_path, sqlite_path

__all__ = ["removed_on_failure", "storage_files"]

_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal", ".lock", ".budget.lock", ".budget.owner")


def storage_files(url: str) -> list[Path]:
    """The files a file-based storage may create; the database or journal comes first."""
    if (db := sqlite_path(url)) is not None:
        return [db, *(Path(f"{db}{suffix}") for suffix in _SQLITE_SIDE_FILES)]
    if (journal := journal_path(url)) is not None:
        return [journal, Path(f"{journal}.lock")]
    return []


def _holds_a_study(url: str, path: Path) -> bool:
    if not path.is_file():
        return False
    if sqlite_path(url) is None:  # a journal: any entry may be a study's
        return path.stat().st_size > 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return bool(conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
    except sqlite3.Error:  # no studies table: only the schema's start, or not ours
        return False


@contextlib.contextmanager
def removed_on_failure(url: str) -> Iterator[None]:
    """Run a command; if it fails and its storage file is new and holds no study, remove it.

    Another worker that starts on the same new file at the same moment would
    share its fate: both run the same first checks, so both fail them alike.
    """
    files = storage_files(url)
    before = {p for p in files if p.exists()}
    try:
        yield
    except BaseException:
        if files and files[0] not in before and not _holds_a_study(url, files[0]):
            for path in files:
                if path not in before and path.exists():
                    with contextlib.suppress(OSError):  # best effort: never hide the error
                        path.unlink()
        raise
