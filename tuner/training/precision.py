"""The number format a frozen base extracts its features in (``model.precision``).

Extraction through a frozen base is the one long computation of a cached study,
and it only reads the base. Where the hardware multiplies bfloat16 natively
(a CPU with AVX512_BF16 or AMX-BF16, an NVIDIA GPU of compute capability 8.0 or
more) the base runs under Keras's ``mixed_bfloat16`` policy: weights stay
float32, convolutions compute in bfloat16, and the pooled features come out, and
are cached, as float32. Elsewhere bfloat16 is emulated and slower, so ``auto``
keeps float32. The head always trains in float32, and a base that trains
(``model.trainable_base``) stays float32.

Nothing here loads TensorFlow until a GPU has to be asked about.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tuner.recipes.settings import PRECISIONS

__all__ = [
    "BFLOAT16",
    "FLOAT32",
    "PRECISIONS",
    "computing_in",
    "cpu_bf16_flags",
    "extraction_precision",
    "keras_policy",
    "precision_note",
    "resolve_precision",
]

FLOAT32, BFLOAT16 = "float32", "bfloat16"
# The CPU flags (as /proc/cpuinfo spells them) that mean bfloat16 products in hardware.
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bfloat16 flags this CPU reports; empty where none or unknown (not Linux).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; read from the machine when None.
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    return [f for f in NATIVE_CPU_FLAGS if f in flags]


def _gpu_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each visible GPU (loads TensorFlow)."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (RuntimeError, ValueError):
            details = {}
        found.append(tuple(details.get("compute_capability") or (0, 0)))
    return found  # type: ignore[return-value]


def _native(
    cpuinfo: str | None = None, gpus: list[tuple[int, int]] | None = None
) -> tuple[bool, str]:
    """Whether the device TensorFlow computes on multiplies bfloat16 natively, and why."""
    gpus = _gpu_capabilities() if gpus is None else gpus
    if gpus:  # TensorFlow places the base on the first GPU
        major, minor = gpus[0]
        if (major, minor) >= (8, 0):
            return True, f"the GPU has compute capability {major}.{minor}"
        return False, f"the GPU has compute capability {major}.{minor}, below 8.0"
    if flags := cpu_bf16_flags(cpuinfo):
        return True, f"the CPU has {' and '.join(flags)}"
    return False, "the CPU has neither avx512_bf16 nor amx_bf16"


def resolve_precision(
    setting: str, *, cpuinfo: str | None = None, gpus: list[tuple[int, int]] | None = None
) -> tuple[str, str]:
    """``float32`` or ``bfloat16`` for a ``model.precision`` setting, and why.

    Args:
        setting: ``auto``, ``float32`` or ``bfloat16``.
        cpuinfo: the text of ``/proc/cpuinfo``, for tests; read from the machine when None.
        gpus: the visible GPUs' compute capabilities, for tests; asked of TensorFlow when None.
    """
    if setting != "auto":
        return setting, f"model.precision = {setting}"
    native, why = _native(cpuinfo, gpus)
    return (BFLOAT16 if native else FLOAT32), f"model.precision = auto: {why}"


def extraction_precision(model: object) -> str:
    """The precision a frozen base of these ``[model]`` settings extracts in on this machine.

    A base that trains is float32 whatever the setting: its gradients need it.
    """
    if getattr(model, "trainable_base", False):
        return FLOAT32
    return resolve_precision(getattr(model, "precision", "auto"))[0]


def keras_policy(precision: str) -> str:
    """The Keras dtype policy a base is built under for ``precision``."""
    return "mixed_bfloat16" if precision == BFLOAT16 else FLOAT32


@contextlib.contextmanager
def computing_in(precision: str) -> Iterator[None]:
    """Keras layers built inside compute in ``precision``; the global policy is restored after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras_policy(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def precision_note(setting: str) -> str:
    """Half a line for the worker's device line: the extraction precision, and why."""
    precision, why = resolve_precision(setting)
    return f"a frozen base extracts in {precision} ({why})"
