"""Where a study's data comes from and how it is read (``[data]``).

Images in class folders (``dir``, downloaded from ``source`` when missing) are
the default; ``recipe = "module:function"`` gives a study data of its own.
"""

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
    recipe: str = ""  # module:function returning (train, validation) of the user's own data
    # Decoded images a process keeps in memory for the full pipeline; beyond, on disk (0: all).
    memory_limit_mb: int = 1024
