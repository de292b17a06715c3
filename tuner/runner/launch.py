"""``tuner worker`` as one library call: one worker in this process, or a local pool.

The CLI parses the arguments and calls :func:`launch`; everything a worker
command does between the spec and its exit code happens here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tuner.common.attrs import worker_name
from tuner.common.console import say
from tuner.common.tfload import require_tensorflow
from tuner.config.build import open_spec_storage
from tuner.config.join import joined_spec
from tuner.config.spec import StudySpec
from tuner.runner.pool import check_pool_size, pool_argv, run_pool
from tuner.runner.signals import StopSignals
from tuner.runner.startup import configure_threads, preflight
from tuner.runner.worker import run_worker
from tuner.storages.leftovers import removed_on_failure
from tuner.study.phases import PhaseBoard

__all__ = ["launch"]


def launch(
    spec: StudySpec,
    url: str,
    *,
    study_arg: str,
    overrides: Sequence[str] = (),
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    accept_space_change: bool = False,
    signals: StopSignals | None = None,
) -> int:
    """Run ``workers`` workers of the spec's study on this machine; returns the exit code.

    Args:
        spec: the loaded spec; ``url`` its storage URL.
        study_arg, overrides: ``--study`` and the ``--set`` options as given, which a
            pool passes on to its children.
        n_trials, timeout, accept_space_change: as for :func:`tuner.runner.worker.run_worker`.
        workers: more than one starts a pool of child processes sharing the cores.
        signals: SIGINT/SIGTERM as installed by the caller.

    Returns:
        0, or 128 + the signal number after SIGINT or SIGTERM (a pool: its children's worst).
    """
    signals = signals or StopSignals()
    require_tensorflow()  # before anything is created: a worker without it cannot train
    check_pool_size(workers)
    with removed_on_failure(url):  # a run that fails before its study exists leaves nothing
        opened = open_spec_storage(url, spec, check=signals.check, worker=workers == 1)
        spec, taken = joined_spec(spec, opened, overrides)
        joined = ""  # said once the checks passed: a failed start prints its error line only
        if taken and "TUNER_WORKER_INDEX" not in os.environ:  # a pool's parent says it
            shown = ", ".join(f"{k}={v}" for k, v in taken.items())
            joined = (
                f"joining study {spec.study.name!r} with its stored settings: {shown} "
                "(--set KEY=VALUE gives this worker its own, if the study allows it)"
            )
        if workers > 1:
            with PhaseBoard(opened, spec.study.name, worker_name()) as board:
                # Check and download once, here; the children then find the data ready.
                _, scan = preflight(
                    spec, opened, accept_space_change=accept_space_change, check=signals.check,
                    publish=board.set,
                )  # fmt: skip
                if joined:
                    say(joined)
                board.set(f"running {workers} workers")
                # The children read the storage from here; a password never goes in argv.
                os.environ["TUNER_STORAGE"] = url
                argv = pool_argv(study_arg, list(overrides), n_trials, timeout,
                                 accept_space_change)  # fmt: skip
                return run_pool(argv, workers, scan)
        signals.check()
        configure_threads(int(os.environ.get("TUNER_THREADS", "0")) or None)
        report = run_worker(
            spec,
            opened,
            url,
            n_trials=n_trials,
            timeout=timeout,
            worker_index=int(os.environ.get("TUNER_WORKER_INDEX", os.getpid())),
            accept_space_change=accept_space_change,
            signals=signals,
            joined=joined,
        )
        say(
            f"worker done: {report.ran} trials ({report.complete} complete, {report.pruned} "
            f"pruned, {report.failed} failed)"
        )
        return report.exit_code
