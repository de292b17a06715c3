"""Computing frozen-base features (TF): here, or in a process with every CPU thread.

:func:`compute_rows` runs the base over the images that the cache lacks and
writes them as packs of a :class:`~tuner.training.feature_store.FeatureStore`.
A worker of a pool (a share of the cores) hands many images to an extraction
process with all of them (:func:`compute_in_child`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuner.common.tfload import quiet_tensorflow

with quiet_tensorflow():
    import keras

from tuner.training.feature_store import FeatureStore
from tuner.training.model import build_feature_extractor
from tuner.training.settings import TrialSetup

__all__ = [
    "Progress",
    "compute_in_child",
    "compute_rows",
    "extract_features",
    "extraction_child",
    "extraction_process",
    "spare_threads",
]

log = logging.getLogger(__name__)
# (split, images done, images to compute in the split), called as the extraction goes
Progress = Callable[[str, int, int], None]


def extract_features(
    extractor: keras.Model,
    images: Sequence[Path] | Sequence[np.ndarray],
    setup: TrialSetup,
    report: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The extractor's pooled features of ``images`` (files, or a data recipe's arrays).

    Files are decoded and resized as Keras' ``image_dataset_from_directory`` does,
    in a prefetched pipeline; ``predict_on_batch`` reuses the model's traced predict
    function, so no batch traces the base again. ``report`` gets the images done.
    """
    out, done = [], 0
    for batch in _batches(images, setup):
        out.append(np.asarray(extractor.predict_on_batch(batch), dtype=np.float32))
        done += len(out[-1])
        if report is not None:
            report(done)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _batches(images: Sequence[Path] | Sequence[np.ndarray], setup: TrialSetup) -> Iterator[Any]:
    import tensorflow as tf

    size, batch = tuple(setup.data.image_size), setup.data.batch_size
    if not images:
        return
    if not isinstance(images[0], Path):
        for i in range(0, len(images), batch):
            yield np.stack(images[i : i + batch])  # type: ignore[arg-type]
        return

    def load(path: tf.Tensor) -> tf.Tensor:  # keras.utils' load_image, bilinear
        image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, size, method="bilinear")
        image.set_shape((*size, 3))
        return image

    paths = tf.data.Dataset.from_tensor_slices([str(p) for p in images])
    yield from (
        paths.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )


def compute_rows(
    setup: TrialSetup,
    todo: dict[str, dict[str, Any]],
    store: FeatureStore,
    progress: Progress | None,
) -> None:
    """Extract the rows of ``todo`` (split -> digest -> image), one pack per split."""
    if not any(todo.values()):
        return
    extractor = build_feature_extractor(setup)
    for split, items in todo.items():
        if not items:
            continue

        def report(done: int, split: str = split, total: int = len(items)) -> None:
            if progress is not None:
                progress(split, done, total)

        rows = extract_features(extractor, list(items.values()), setup, report)
        store.add(list(items), rows)


def spare_threads() -> int:
    """The machine's CPU threads when this process was given fewer (a worker of a pool), else 0.

    A pool splits the cores among its workers for training; while one worker
    extracts the features, the others only wait for them, so the extraction gets
    every core, in a process of its own (TensorFlow's thread count is fixed once set).
    """
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mine = tf.config.threading.get_intra_op_parallelism_threads()
    return int(cores or 0) if 0 < mine < int(cores or 0) else 0


def compute_in_child(
    setup: TrialSetup,
    todo: dict[str, dict[str, Any]],
    store: FeatureStore,
    threads: int,
    progress: Progress | None,
) -> bool:
    """Compute the rows in a process with ``threads`` CPU threads; False if it failed.

    The child reports each batch on its standard output, which goes to ``progress``;
    its other output is kept in a file and shown only if it fails. A signal that
    stops this worker (raised by ``progress``) stops the child too.
    """
    import subprocess

    job = store.folder.parent / f".{store.key}.job-{os.getpid()}"
    errors = store.folder.parent / f".{store.key}.stderr-{os.getpid()}"
    job.write_bytes(pickle.dumps((setup, todo, store.cache_dir, store.key)))
    command, env = extraction_process(job, threads)
    try:
        with errors.open("w") as err:
            child = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, env=env, text=True
            )
            try:
                assert child.stdout is not None
                for line in child.stdout:
                    split, done, total = line.split()
                    if progress is not None:
                        progress(split, int(done), int(total))
                ok = child.wait() == 0
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        if not ok:
            tail = errors.read_text(errors="replace").strip().splitlines()[-3:]
            log.warning("the extraction process failed (%s); extracting here", " / ".join(tail))
        return ok
    finally:
        job.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)


def extraction_process(job: Path, threads: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an extraction process with ``threads`` CPU threads.

    ``job`` holds the pickled ``(setup, todo, cache_dir, key)`` it computes (split ->
    digest -> image file).
    """
    import sys

    env = {
        **os.environ,
        "TUNER_THREADS": str(threads),
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": str(min(2, threads)),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = (
        "import sys; from tuner.training.extraction import extraction_child as c; c(sys.argv[1])"
    )
    return [sys.executable, "-c", code, str(job)], env


def extraction_child(job: str) -> None:
    """The extraction process of :func:`compute_in_child`: one line per batch on stdout."""
    import tensorflow as tf

    threads = int(os.environ["TUNER_THREADS"])
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    setup, todo, folder, key = pickle.loads(Path(job).read_bytes())

    def report(split: str, done: int, total: int) -> None:
        print(split, done, total, flush=True)

    compute_rows(setup, todo, FeatureStore(folder, key), report)
