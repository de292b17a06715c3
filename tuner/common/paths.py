"""Checks on the places tuner writes to, made before any work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["nearest_existing", "probe_writable"]


def nearest_existing(path: Path) -> Path | None:
    """``path`` itself or its closest ancestor that exists; None when none does."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def probe_writable(folder: Path) -> None:
    """Raise ``OSError`` unless a new file can be made in ``folder``.

    ``os.access`` alone trusts permission bits, which root, ``/proc`` and
    read-only mounts defeat, so a temporary file is really created.
    """
    if not os.access(folder, os.W_OK):
        raise PermissionError(13, "Permission denied", str(folder))
    with tempfile.TemporaryFile(dir=folder) as probe:  # a few pages, so a full disk shows
        probe.write(bytes(16384))
        probe.flush()
        os.fsync(probe.fileno())
