"""Which device this process trains on, said once when TensorFlow loads.

A GPU user's first question is whether the worker sees its GPU: the worker's
log names the device (or says why there is none) before the first trial.
"""

from __future__ import annotations

from tuner.common.tfload import quiet_tensorflow
from tuner.training.precision import precision_note

with quiet_tensorflow():
    import tensorflow as tf

__all__ = ["device_line"]


def device_line(precision: str | None = None) -> str:
    """One line naming this TensorFlow and the devices it trains on.

    Args:
        precision: the spec's ``model.precision``; when given, the line also says
            which precision a frozen base extracts in here, and why.
    """
    line = _devices()
    return f"{line}; {precision_note(precision)}" if precision else line


def _devices() -> str:
    version = tf.__version__
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            try:
                details = tf.config.experimental.get_device_details(gpu)
            except (RuntimeError, ValueError):
                details = {}
            index = gpu.name.rsplit(":", 1)[-1]
            names.append(f"GPU {index} ({details.get('device_name', 'unnamed')})")
        return f"TensorFlow {version} trains on {', '.join(names)}"
    if tf.test.is_built_with_cuda():
        why = (
            "this TensorFlow has CUDA, but no GPU is visible; check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES"
        )
    else:
        why = 'this TensorFlow is built without CUDA; pip install -e ".[gpu]" for an NVIDIA GPU'
    return f"TensorFlow {version} trains on the CPU ({why})"
