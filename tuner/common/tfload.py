"""Loading TensorFlow without its start-up log on stderr.

TensorFlow's C++ core prints an absl banner and oneDNN notes straight to file
descriptor 2 when it loads, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. A worker
that stops on a user error must print one line, so the load happens with
descriptor 2 captured; whatever else was written meanwhile is passed on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from tuner.errors import InstallError

__all__ = ["quiet_tensorflow", "require_tensorflow"]

NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} )")


NOT_INSTALLED = (
    "TensorFlow is not installed; install tuner with the extra for this machine: "
    'pip install -e ".[cpu]" (any machine) or pip install -e ".[gpu]" (Linux with an NVIDIA GPU)'
)


def require_tensorflow() -> None:
    """Raise one clear line when no TensorFlow is installed; cheap, loads nothing.

    TensorFlow comes from the ``cpu`` or the ``gpu`` extra, never from the base
    install, so that a GPU install holds exactly one TensorFlow distribution.
    """
    if sys.modules.get("tensorflow") is None and importlib.util.find_spec("tensorflow") is None:
        raise InstallError(NOT_INSTALLED)


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Run the block (an import that loads TensorFlow) without TensorFlow's start-up lines.

    Raises:
        InstallError: when TensorFlow is not installed (see :func:`require_tensorflow`).
    """
    if "tensorflow" in sys.modules:
        yield
        return
    require_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not NOISE.match(line):
                    print(line, file=sys.stderr)
