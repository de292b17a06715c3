"""``tuner status`` and ``tuner export`` as library calls, for the CLI's thin shell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tuner.common.console import warn
from tuner.config.build import (
    artifact_dir,
    artifact_store,
    load_existing_study,
    open_spec_storage,
    stored_spec,
)
from tuner.config.spec import StudySpec
from tuner.errors import TunerError
from tuner.results.export import best_result, check_output, write_json, write_plots
from tuner.results.status import render_status, summarize
from tuner.space.params import format_params
from tuner.storages.storage import redact_url
from tuner.study.choice import tie_line
from tuner.study.opening import value_labels

__all__ = ["dashboard", "export_study", "show_status"]


def show_status(spec: StudySpec, url: str, console: Console, study_arg: str = "") -> None:
    """Print the study's tables: trials by state, the best, the top 5, running trials, workers.

    Raises:
        StudyError: when the study does not exist, or has no complete trial yet (the
            tables are printed first when something is queued or running).
    """
    storage = open_spec_storage(url, spec, must_exist=True)
    found = load_existing_study(spec, storage)
    max_gap = stored_spec(found, spec, []).objective.max_gap
    summary = summarize(found, max_gap=max_gap, storage=storage)
    console.print(*render_status(summary))
    if not summary.top and not summary.alive:
        best_result(found, storage=storage)  # raises the "no complete trial yet" error
    # While workers start (features, a download), the tables say what they do; exit 0.


def export_study(
    spec: StudySpec,
    url: str,
    *,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    model: Path | None = None,
    plots: Path | None = None,
    mkdir: bool = False,
    force: bool = False,
    test: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Export the best trial: JSON to ``out``, PNGs to ``plots``, the model to ``model``.

    Outputs are checked before anything is read, so a wrong path fails at once.
    The model is rebuilt from the spec the study was created with (``overrides``
    on top), so it matches what the trials trained.

    Returns:
        The export JSON when ``out`` is None (for the caller to print), else None.
    """
    if model is not None and model.suffix != ".keras":
        raise TunerError(f"--model {model} must end in .keras; write it like --model best.keras")
    for path, option, folder in ((out, "--out", False), (model, "--model", False),
                                 (plots, "--plots", True)):  # fmt: skip
        if path is not None:
            check_output(path, option, folder=folder, mkdir=mkdir, force=force)
    storage = open_spec_storage(url, spec, must_exist=True)
    found = load_existing_study(spec, storage)
    spec = stored_spec(found, spec, list(overrides))
    result = best_result(found, spec.objective.max_gap, storage=storage)
    extra: dict[str, object] = {}
    if plots is not None:
        for path in write_plots(found, plots):
            say(f"wrote {path}")
    if model is not None:
        from tuner.results.model_export import write_model  # loads TensorFlow

        chosen = found.get_trials(deepcopy=False)[result.best_trial]
        extra = write_model(found, spec, artifact_dir(url, spec), model, say=say, trial=chosen,
                            test=test)  # fmt: skip
        say(f"wrote {model}")
    if out is None:
        return result.to_json(spec, extra)
    write_json(result, spec, out, extra)
    if result.tied:
        complete = result.states.get("COMPLETE", 0)
        warn(tie_line(complete, value_labels(found)[0], result.best_value))
    values = ", ".join(
        f"{label} {v:.4f}"
        for label, v in zip(value_labels(found), result.best_values, strict=False)
    )
    front = (
        f" (of {len(result.best_trials)} on the Pareto front)"
        if len(result.best_values) > 1
        else ""
    )
    within = {
        True: f", gap within {result.max_gap:g}",
        False: f", but no trial has a gap within {result.max_gap:g}",
    }
    say(
        f"wrote {out}: best trial {result.best_trial}{front}, "
        f"{format_params(result.best_params)}, {values}{within.get(result.feasible, '')}"
    )
    return None


def dashboard(spec: StudySpec, url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for the spec's study, which must exist, until Ctrl-C.

    Raises:
        StudyError, StorageError: for an unknown study or a storage that cannot be opened.
        TunerError: for a busy port or an address that cannot be bound.
    """
    from tuner.results.dashboard import serve

    storage = open_spec_storage(url, spec, must_exist=True)
    load_existing_study(spec, storage)
    store = artifact_store(url, spec, create=False)
    serve(storage, spec.study.name, artifact_store=store, where=redact_url(url), host=host,
          port=port)  # fmt: skip
