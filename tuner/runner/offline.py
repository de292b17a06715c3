"""Working offline: when a worker may download the dataset; the command that needs no network.

No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

from tuner.assets.datasets import DATASETS
from tuner.assets.weights import imagenet_cache_files
from tuner.config.build import recipe_for
from tuner.config.spec import StudySpec, worker_command
from tuner.recipes import Base

__all__ = ["offline_advice", "spec_names_folder"]


def spec_names_folder(spec: StudySpec) -> bool:
    """Whether ``data.dir`` is the folder the spec file itself names (not a ``--set``)."""
    if not spec.spec_file:
        return True
    try:
        raw = tomllib.loads(Path(spec.spec_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    named = raw.get("data", {}).get("dir")
    return isinstance(named, str) and Path(named) == Path(spec.data.dir)


def offline_advice(spec: StudySpec, *, data_ready: bool) -> str:
    """The one worker command that runs without a network, data folder and weights together.

    Args:
        spec: the study spec.
        data_ready: whether ``data.dir`` holds the dataset already (then it is kept).
    """
    source = DATASETS.get(spec.data.source)
    folder = source.folder.removesuffix("-master") if source else "DATASET"
    command = worker_command(spec)
    if not spec.data.recipe:  # a data recipe's study has no data folder
        command += " --set data.dir=" + (spec.data.dir if data_ready else f"PATH/{folder}")
    needs: list[str] = [] if data_ready else ["a copy of the dataset's train/ and validation/"]
    base = recipe_for(spec).base(spec.model.base)
    weights = spec.model.weights
    if base is not None and weights not in ("imagenet", "none"):
        command += f" --set model.weights={weights}"
    elif base is not None and weights == "imagenet" and not _cached(base) and spec.data.recipe:
        command += f" --set model.weights=PATH/{base.imagenet_file}"
        needs.append(base.weights_file)
    elif base is not None and weights == "imagenet" and not _cached(base):
        command += f" --set model.weights=PATH/{base.imagenet_file}"
        needs.append(base.weights_file)
        data = spec.data.dir if data_ready else f"PATH/{folder}"
        scratch = f"tuner worker --study clothing-scratch --set data.dir={data}"
        return (
            f"run `{command}` with {' and '.join(needs)}; or, to learn without any download, "
            f"run `{scratch}` (a small CNN trained from scratch; model.weights=none would give "
            "this study a random base, whose features the head cannot learn from)"
        )
    return f"run `{command}`" + (f" with {' and '.join(needs)}" if needs else "")


def _cached(base: Base) -> bool:
    return any(path.is_file() for path in imagenet_cache_files(base))
