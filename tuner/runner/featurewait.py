"""Waiting for another worker's frozen-base features before TensorFlow loads.

One worker on a machine computes a model part's features while the others wait
(:func:`tuner.training.features.load_or_compute`). That wait used to happen after
TensorFlow had loaded, so each waiting worker held TensorFlow's memory for the
minutes an extraction takes. Here a worker that is about to load TensorFlow first
looks, without it, for an extraction of its own model part that another process
holds, and waits for that one to end.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tuner.recipes import BASES
from tuner.training.feature_store import busy_store, cache_dir, cache_reason
from tuner.training.settings import TrialSetup

__all__ = ["light_parts", "wait_for_features_elsewhere"]


def light_parts(setup: TrialSetup) -> dict[str, Any] | None:
    """The model part's key fields that can be known without TensorFlow, or None.

    None when the study does not read the feature cache. The fields are those
    :func:`tuner.training.features.cache_key_parts` writes to ``key.json``, less the
    precision (``auto`` may need TensorFlow to see a GPU), so a wait may also be for
    the same base in another precision on this machine: a wait, never a wrong row.
    """
    if cache_reason(setup) is not None:
        return None
    base = setup.recipe.base(setup.model.base) or BASES.get(setup.model.base)
    if base is None:
        return None
    try:
        keras = version("keras")
    except PackageNotFoundError:
        return None
    weights = setup.model.weights
    if weights == "imagenet":
        identity = f"imagenet@keras-{keras}"
    elif weights == "none":
        identity = f"random(seed={setup.model.seed})@keras-{keras}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            return None  # the extraction names the missing file
        identity = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "base": base.identity,
        "weights": identity,
        "image_size": list(setup.data.image_size),
        "preprocessing": base.preprocessing,
        "keras": keras,
    }


def wait_for_features_elsewhere(
    setup: TrialSetup,
    say: Callable[[str], None],
    check: Callable[[], None],
    publish: Callable[[str], None] = lambda _: None,
    poll: float = 0.5,
) -> bool:
    """Wait, holding no TensorFlow, while another process computes this study's features.

    Returns whether it waited. ``check`` is called between looks (a signal may stop
    the wait); the line is said once, and ``publish`` names the phase when it waits.
    """
    parts = light_parts(setup)
    if parts is None or (store := busy_store(cache_dir(setup), parts)) is None:
        return False
    publish("waiting for another worker's features")
    say(
        f"waiting for the frozen-base features that {store.holder()} computes into "
        f"{store.folder}, before loading TensorFlow; each trial then trains only the head"
    )
    while busy_store(cache_dir(setup), parts) is not None:
        check()
        time.sleep(poll)
    return True
