"""The base's weights, checked before TensorFlow loads, so a bad choice fails in a second.

``model.weights`` is ``"imagenet"`` (downloaded once by Keras into its cache),
``"none"`` (a seeded random base) or a path to a weights file, for the frozen
base under a head recipe (``model.base``). A missing or unreadable file, or an
ImageNet download that cannot start, is reported here, with the offline
options; :mod:`tuner.training.model` loads the weights afterwards. A whole-model recipe
has no base, and nothing to check.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tuner.errors import WeightsError
from tuner.recipes import BASES, Base
from tuner.recipes.settings import ModelSettings

__all__ = [
    "check_weights",
    "check_weights_file",
    "imagenet_cache_files",
    "offline_hint",
    "socket_timeout",
]

WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")


def offline_hint(base: Base) -> str:
    """What to do without a network, for errors about this base's ImageNet weights."""
    return (
        f"use a local file with --set model.weights=PATH/{base.imagenet_file}, "
        "or --set model.weights=none"
    )


def imagenet_cache_files(base: Base = BASES["xception"]) -> list[Path]:
    """Where Keras keeps the base's downloaded ImageNet file (``$KERAS_HOME``, ~, /tmp)."""
    # As keras.utils.get_file: $KERAS_HOME, else ~/.keras; /tmp/.keras when that is read-only.
    home = os.environ.get("KERAS_HOME") or str(Path("~/.keras").expanduser())
    homes = [home, "/tmp/.keras"]
    return [Path(home) / "models" / base.imagenet_file for home in homes]


def check_weights_file(path: Path, base: Base = BASES["xception"]) -> None:
    """Raise a WeightsError unless ``path`` is a readable Keras weights file."""
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give the path of {base.weights_file} or "
            'of other .weights.h5 weights, or use --set model.weights=none (or "imagenet" '
            "when online)"
        )
    if not path.name.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(
            f"weights file {path} must end in {', '.join(WEIGHTS_SUFFIXES)}; rename it, "
            "or use --set model.weights=none"
        )
    if path.suffix == ".keras":
        readable, reason = zipfile.is_zipfile(path), "not a .keras (zip) archive"
    else:
        readable, reason = _is_hdf5_with_weights(path)
    if not readable:
        raise WeightsError(
            f"weights file {path} is corrupt ({reason}); replace it with {base.weights_file}, "
            "or use --set model.weights=none"
        )


def _is_hdf5_with_weights(path: Path) -> tuple[bool, str]:
    import h5py  # Keras's own HDF5 reader; it does not load TensorFlow

    try:
        with h5py.File(path, "r") as f:
            if not (list(f.keys()) or list(f.attrs.keys())):
                return False, "an empty HDF5 file"
    except (OSError, ValueError) as e:
        return False, f"not a readable HDF5 file: {str(e).splitlines()[0]}"
    return True, ""


def check_weights(model: ModelSettings, base: Base | None, offline: str = "") -> None:
    """Fail now, with the offline options, when the base's weights cannot be had.

    ``model`` gives ``model.weights`` and the download timeout; ``base`` is the
    recipe's frozen base (None for a whole model, which has none to load).
    ``offline`` is the advice for a failed ImageNet download, in the caller's
    options; by default, the ``--set model.weights`` choices.

    Raises:
        WeightsError: for a missing or corrupt weights file, or an ImageNet file
            that is not cached and cannot be downloaded.
    """
    weights = model.weights
    if weights == "none":
        return  # a seeded random base
    if base is None:
        return  # a whole model trains from scratch: there is no base to load
    if weights != "imagenet":
        check_weights_file(Path(weights).expanduser(), base)
        return
    if any(path.is_file() for path in imagenet_cache_files(base)):
        return
    url = base.imagenet_url
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=model.download_timeout):
            pass
    except urllib.error.HTTPError:
        return  # the server answers; Keras reports whatever it says
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e or type(e).__name__
        raise WeightsError(
            f"cannot download the ImageNet weights for {base.display} from {url} "
            f"({reason}); offline, {offline or offline_hint(base)}"
        ) from None


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket wait (Keras downloads with ``urlretrieve``, which has no timeout)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
