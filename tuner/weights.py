"""The base's weights, checked before TensorFlow loads, so a bad choice fails in a second.

``model.weights`` is ``"imagenet"`` (downloaded once by Keras into its cache),
``"none"`` (a seeded random base) or a path to a weights file. A missing or
unreadable file, or an ImageNet download that cannot start, is reported here,
with the offline options; :mod:`tuner.model` loads the weights afterwards.
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
from tuner.spec import StudySpec

__all__ = [
    "IMAGENET_URL",
    "check_weights",
    "check_weights_file",
    "imagenet_cache_files",
    "socket_timeout",
]

# Where keras.applications.Xception(weights="imagenet", include_top=False) gets its file.
IMAGENET_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/xception/" + IMAGENET_FILE
)
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")
OFFLINE_HINT = (
    "use a local file with --set model.weights=PATH/xception_notop.weights.h5, "
    "or --set model.weights=none"
)


def imagenet_cache_files() -> list[Path]:
    """The places where Keras keeps the downloaded ImageNet file (``$KERAS_HOME``, ~, /tmp)."""
    # As keras.utils.get_file: $KERAS_HOME, else ~/.keras; /tmp/.keras when that is read-only.
    home = os.environ.get("KERAS_HOME") or str(Path("~/.keras").expanduser())
    homes = [home, "/tmp/.keras"]
    return [Path(home) / "models" / IMAGENET_FILE for home in homes]


def check_weights_file(path: Path) -> None:
    """Raise a WeightsError unless ``path`` is a readable Keras weights file."""
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give the path of Xception notop weights "
            '(.weights.h5), or use --set model.weights=none (or "imagenet" when online)'
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
            f"weights file {path} is corrupt ({reason}); replace it with Xception notop "
            "weights, or use --set model.weights=none"
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


def check_weights(spec: StudySpec) -> None:
    """Fail now, with the offline options, when the spec's base weights cannot be had.

    Raises:
        WeightsError: for a missing or corrupt weights file, or an ImageNet file
            that is not cached and cannot be downloaded.
    """
    weights = spec.model.weights
    if spec.model.recipe != "xception-head" or weights == "none":
        return  # small-cnn trains from scratch; "none" is a random base
    if weights != "imagenet":
        check_weights_file(Path(weights).expanduser())
        return
    if any(path.is_file() for path in imagenet_cache_files()):
        return
    request = urllib.request.Request(IMAGENET_URL, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=spec.model.download_timeout):
            pass
    except urllib.error.HTTPError:
        return  # the server answers; Keras reports whatever it says
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e or type(e).__name__
        raise WeightsError(
            f"cannot download the ImageNet weights for Xception from {IMAGENET_URL} "
            f"({reason}); offline, {OFFLINE_HINT}"
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
