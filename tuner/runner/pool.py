"""Local worker pools: ``tuner worker --workers N`` as N child processes sharing one study.

Each child is a plain ``tuner worker`` with its share of the CPU cores (and
its own GPU, when there are any). The parent forwards Ctrl-C and SIGTERM once
to each child, names any child that dies, and lets the survivors finish the
study: a dead child's trial is failed and retried by them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from tuner.assets.datasets import DatasetScan
from tuner.common.console import say, warn
from tuner.errors import TunerError

__all__ = [
    "CHECKED_DATA_ENV",
    "check_pool_size",
    "pool_argv",
    "pool_environment",
    "run_pool",
    "visible_gpus",
]

# Set by a pool for its children: a data folder whose images all decoded a moment ago.
CHECKED_DATA_ENV = "TUNER_CHECKED_DATA"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES``, else what nvidia-smi lists."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def pool_environment(index: int, workers: int, cores: int, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of pool worker ``index``: its CPU share, and its own GPU if any."""
    env = {
        "TUNER_WORKER_INDEX": str(index),
        "TUNER_THREADS": str(max(1, cores // workers)),
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def check_pool_size(workers: int) -> None:
    """Refuse a pool larger than the cores (or GPUs) that its workers would share.

    Raises:
        TunerError: naming the most workers this machine can give a core or GPU each.
    """
    cores, gpus = os.cpu_count() or 1, visible_gpus()
    limit = max(cores, len(gpus))
    if workers > limit:
        what = f"{cores} CPU cores" + (f" and {len(gpus)} GPUs" if gpus else "")
        raise TunerError(
            f"--workers {workers} is more than this machine's {what}, so workers would "
            f"fight over them; use --workers {limit} or fewer, and start more workers on "
            "other machines against the same --storage"
        )


def pool_argv(
    study: str,
    overrides: Sequence[str],
    n_trials: int | None,
    timeout: float | None,
    accept_space_change: bool,
) -> list[str]:
    """The ``tuner worker`` options every child gets (the storage travels in the environment)."""
    argv = ["--study", study, *(f"--set={s}" for s in overrides)]
    argv += [f"--n-trials={n_trials}"] if n_trials else []
    argv += [f"--timeout={timeout}"] if timeout else []
    argv += ["--accept-space-change"] if accept_space_change else []
    return argv


# Exit codes of a child that stopped cleanly on SIGINT or SIGTERM sent to it alone.
_STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _how(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def run_pool(argv: Sequence[str], workers: int, checked: DatasetScan | None = None) -> int:
    """Run ``tuner worker`` ``workers`` times in child processes; forward Ctrl-C and SIGTERM.

    ``checked`` is the dataset as this process just validated it: when all its
    images decoded, the children skip decoding them again.

    Returns:
        128 + the signal after a forwarded signal; otherwise 0 when a child finished
        the study and the others exited 0 or were killed from outside (their trials are
        retried by the survivors), else the first error code.
    """
    cores = os.cpu_count() or 1
    gpus = visible_gpus()
    say(
        f"starting {workers} workers, {max(1, cores // workers)} CPU threads each"
        + (f", GPUs {', '.join(gpus)}" if gpus else "")
    )
    children = []
    for i in range(workers):
        env = {**os.environ, **pool_environment(i, workers, cores, gpus)}
        if checked is not None and not checked.bad_files:
            env[CHECKED_DATA_ENV] = str(checked.root.resolve())
        cmd = [sys.executable, "-m", "tuner", "worker", *argv, "--workers", "1"]
        # Own sessions: a terminal's Ctrl-C reaches only this parent, which forwards it
        # once. A second signal would stop a child at once, perhaps mid-trial.
        children.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    forwarded: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        forwarded.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(children):  # poll all, so a dead child is named at once
            for i, child in enumerate(children):
                if i in codes or (code := child.poll()) is None:
                    continue
                codes[i] = code
                if code < 0 and not forwarded:
                    warn(f"worker w{i} (pid {child.pid}) {_how(code)}; its trial will be retried")
                elif code in _STOPPED and not forwarded:
                    warn(
                        f"worker w{i} (pid {child.pid}) was stopped by a signal; "
                        "its trial is queued again"
                    )
                elif code > 0 and not forwarded:
                    warn(f"worker w{i} (pid {child.pid}) {_how(code)}; see its lines above")
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if forwarded:
        return 128 + forwarded[0]
    errors = [c for c in codes.values() if c > 0 and c not in _STOPPED]
    if errors:
        return errors[0]
    if 0 in codes.values():
        return 0
    return 128 - min(codes.values())  # every child was killed
