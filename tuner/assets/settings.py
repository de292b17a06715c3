"""Where a study's images come from and how they are read (``[data]``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataSettings"]


@dataclass(frozen=True)
class DataSettings:
    dir: str = "data"
    source: str = ""
    url: str = ""  # another address for the source's archive (a mirror)
    image_size: tuple[int, int] = (150, 150)
    batch_size: int = 32
    skip_bad_files: bool = False
    augment: bool = False
