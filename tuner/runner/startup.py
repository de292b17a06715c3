"""A worker's start-up: thread budget, dataset (downloaded when missing), and the checks
that must pass before the study is joined and training starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage

from tuner.assets.datasets import DATASETS, DatasetScan, download_dataset, scan_dataset
from tuner.common.console import download_progress, say, warn
from tuner.config.build import check_base_weights, open_study, resolve_checked, trial_setup
from tuner.config.join import check_joinable
from tuner.config.spec import StudySpec
from tuner.errors import DataError
from tuner.recipes import Recipe
from tuner.runner.offline import offline_advice, spec_names_folder
from tuner.runner.pool import CHECKED_DATA_ENV
from tuner.training.probe import probe

__all__ = ["CHECKED_DATA_ENV", "Publish", "configure_threads", "ensure_dataset", "preflight"]

Publish = Callable[..., None]  # (phase, progress="") of a PhaseBoard


def _no_publish(phase: str, progress: object = "") -> None:
    pass


def configure_threads(threads: int | None) -> None:
    """Give TensorFlow a fixed number of CPU threads; call before any TF op runs."""
    if not threads:
        return
    inter = max(1, min(2, threads))
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(inter)
    from tuner.common.tfload import quiet_tensorflow

    with quiet_tensorflow():  # TensorFlow's start-up lines (absl, oneDNN) stay out of the log
        import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised: keep its setting
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    # Read back, so the log shows what TensorFlow really uses.
    say(
        f"TensorFlow CPU threads: {tf.config.threading.get_intra_op_parallelism_threads()} "
        f"intra-op, {tf.config.threading.get_inter_op_parallelism_threads()} inter-op"
    )


def _download(spec: StudySpec, folder: Path, check: Callable[[], None], publish: Publish) -> None:
    """Download the spec's known dataset into ``folder``, with a progress bar."""
    if spec.data.source not in DATASETS:
        raise DataError(
            f"data.source {spec.data.source!r} is not a known dataset "
            f"({', '.join(DATASETS)}); fix data.source or download the data by hand"
        )
    message = f"{folder} is missing; downloading the {spec.data.source} dataset"
    with download_progress(spec.data.source) as bar:

        def progress(done: int, total: int | None) -> None:
            nonlocal message  # said once bytes arrive: a failed start leaves one line
            if message:
                say(message)
                message = ""
            bar(done, total)
            publish("downloading", f"{100 * done // total}%" if total else f"{done} bytes")
            check()  # a signal stops the download between chunks

        download_dataset(
            spec.data.source,
            folder,
            url=spec.data.url or None,
            progress=progress,
            offline=offline_advice(spec, data_ready=False),
        )


def ensure_dataset(
    spec: StudySpec, check: Callable[[], None] = lambda: None, publish: Publish = _no_publish
) -> DatasetScan:
    """Validate ``data.dir``, downloading the spec's known dataset first if it is missing.

    Only the folder that the spec file itself names is downloaded into: a
    ``--set data.dir`` that does not exist is more likely a typo, and an error.

    ``check`` is called between download chunks, and may raise to stop;
    ``publish`` receives the download's phase (see :class:`tuner.study.phases.PhaseBoard`).
    """
    folder = Path(spec.data.dir)
    if not folder.exists() and spec.data.source and spec_names_folder(spec):
        # Workers started together download once: the others wait, then find the folder.
        made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = Path(f"{folder}.download.lock")
        try:
            with FileLock(lock):
                if not folder.exists():
                    _download(spec, folder, check, publish)
        finally:
            # A waiting worker finds the folder once it holds the old lock, so it is safe
            # to remove; a failed download leaves no folder behind that it created.
            lock.unlink(missing_ok=True)
            for parent in made if not folder.exists() else ():
                with contextlib.suppress(OSError):  # not empty: something else is there
                    parent.rmdir()
    # A pool's parent has just decoded every image; its children need not do it again.
    checked = os.environ.get(CHECKED_DATA_ENV) == str(folder.resolve())
    scan = scan_dataset(folder, skip_bad_files=spec.data.skip_bad_files, decode=not checked)
    if scan.bad_files:
        names = ", ".join(str(p) for p in scan.bad_files[:5])
        more = f" and {len(scan.bad_files) - 5} more" if len(scan.bad_files) > 5 else ""
        warn(f"skipping {len(scan.bad_files)} unreadable files: {names}{more}")
    return scan


def random_base_warning(spec: StudySpec, recipe: Recipe) -> str | None:
    """A head on a base with random weights cannot learn: say so, with the ways out."""
    base = recipe.base(spec.model.base)
    if base is None or spec.model.weights != "none" or spec.model.trainable_base:
        return None
    return (
        f"model.weights = none gives the frozen {base.display} base random weights, whose "
        "features carry almost nothing to learn from: expect every trial near the majority "
        f"class. For results that mean something offline, give the weights file "
        f"(--set model.weights=PATH/{base.imagenet_file}), or run the study that learns "
        "without downloads: tuner worker --study clothing-scratch"
    )


def preflight(
    spec: StudySpec,
    storage: BaseStorage,
    *,
    worker_index: int = 0,
    accept_space_change: bool = False,
    check: Callable[[], None] = lambda: None,
    publish: Publish = _no_publish,
) -> tuple[optuna.Study, DatasetScan | None]:
    """Check the study, recipe, data and weights, then join the study, before training starts.

    A mistake in any of them thus fails at once, with one error line, and no
    trial is started. A user's recipe module is imported and its signature
    checked before the data is read, then the recipe is built once at the edges
    of the space (see :mod:`tuner.training.probe`); built-in recipes need no
    TensorFlow here. A ``data.recipe`` is loaded once and the model trained on
    one batch of it (no scan is returned then). The study is created only once
    all of this passed, so a first run that fails leaves no study behind with
    its settings.

    Raises:
        StudyError, RecipeError, DataError, WeightsError: naming what is wrong and
            how to fix it.
    """
    if spec.model.weights not in ("imagenet", "none"):  # a missing file is named as such
        check_base_weights(spec)
    check_joinable(spec, storage, accept_space_change=accept_space_change)
    recipe = resolve_checked(spec)
    publish("checking data")
    scan = None
    if spec.data.recipe:  # the user's own data: loaded, and checked to fit, by the probe
        messages = probe(trial_setup(spec, recipe), recipe, 0)
        check_base_weights(spec, offline=offline_advice(spec, data_ready=True))
    else:
        scan = ensure_dataset(spec, check, publish)
        check()
        check_base_weights(spec, offline=offline_advice(spec, data_ready=True))
        messages = probe(trial_setup(spec, recipe), recipe, len(scan.class_names))
    first = os.environ.get(CHECKED_DATA_ENV) is None  # not a pool's child: its parent said it
    if first and (line := random_base_warning(spec, recipe)) is not None:
        messages.insert(0, line)  # once all checks passed
    for message in messages:
        warn(message)
    study = open_study(
        spec, storage, worker_index=worker_index, accept_space_change=accept_space_change
    )
    return study, scan
