"""The ``tuner`` command: a thin shell that parses arguments and calls the library.

Every user error becomes one ``error: ...`` line on stderr and exit code 2;
``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

from tuner.runner.signals import StopSignals

# A worker handles SIGINT and SIGTERM from its first moment, not only once optuna and
# typer have loaded: a signal during the imports is then acted on at the first check.
_SIGNALS = StopSignals()
_WORKER_PROCESS = next((a for a in sys.argv[1:] if not a.startswith("-")), None) == "worker"
if _WORKER_PROCESS:
    _SIGNALS.install()

import optuna  # noqa: E402 - after the signal handlers
import typer  # noqa: E402 - after the signal handlers

try:  # typer 0.2x ships its own copy of click, with its own exception classes
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors

from tuner.common.console import err_console, say  # noqa: E402 - after the signal handlers
from tuner.errors import TunerError, one_line  # noqa: E402 - after the signal handlers

_NO_ARGS_HELP = getattr(click_errors, "NoArgsIsHelpError", ())  # click >= 8.2

app = typer.Typer(
    name="tuner",
    help=(
        "Tune the hyperparameters of a Keras model with Optuna, shared by many workers.\n\n"
        "Start `tuner worker --study clothing` in as many terminals or machines as you like; "
        "they share one study through SQLite, PostgreSQL or MySQL. Watch it with "
        "`tuner dashboard`, read it with `tuner status`, and take the result with "
        "`tuner export`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Download the datasets that studies use.", no_args_is_help=True)
app.add_typer(data_app, name="data")

StudyOpt = Annotated[
    str,
    typer.Option(
        "--study", help="Study name (a spec in studies/NAME.toml) or a path to a spec file."
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="TUNER_STORAGE",
        show_envvar=True,
        help="Storage URL: sqlite:///FILE.db, postgresql://USER@HOST/DB, "
        "mysql+pymysql://USER@HOST/DB or journal://FILE.log. Default: the spec's study.storage.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a spec key, e.g. --set train.epochs=2 --set model.weights=none. "
        "Repeatable; values are TOML (numbers, true/false, [150, 150]) or plain strings.",
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
]


def _load(study: str, storage: str | None, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from tuner.config.build import storage_url
    from tuner.config.spec import load_spec

    spec = load_spec(study, overrides or [])
    return spec, storage_url(spec, storage)


@app.command()
def worker(
    study: StudyOpt = "clothing",
    storage: StorageOpt = None,
    set_: SetOpt = None,
    n_trials: Annotated[
        int | None,
        typer.Option(
            "--n-trials",
            min=1,
            help="Stop once the study holds N complete or pruned trials, counted over all "
            "workers; a worker waits for other workers' running trials (and retries those "
            "whose worker died) before it stops (default: the spec's search.n_trials).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Start no new trial after SEC seconds."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="Worker processes on this machine, sharing the CPU cores."
        ),
    ] = 1,
    accept_space_change: Annotated[
        bool,
        typer.Option(
            "--accept-space-change",
            help="Continue an existing study although the spec's search space has changed.",
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Run trials of a study until it holds --n-trials finished trials. Ctrl-C stops cleanly."""
    from tuner.runner.signals import Interrupted

    signals = _SIGNALS
    with signals.installed():
        try:
            code = _worker(study, storage, set_, n_trials, timeout, workers,
                           accept_space_change, signals)  # fmt: skip
        except Interrupted as stop:
            say(f"stopped by {stop.name} during start-up; no trial was started")
            code = 128 + stop.signum
    if _WORKER_PROCESS:
        # The work is done, every write committed, and the exit code decided. Python's
        # shutdown restores the default signal handlers, and TensorFlow's teardown keeps it
        # there for a while: a late SIGTERM would kill the process and hide the code.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def _worker(
    study: str,
    storage: str | None,
    set_: list[str] | None,
    n_trials: int | None,
    timeout: float | None,
    workers: int,
    accept_space_change: bool,
    signals: StopSignals,
) -> int:
    from tuner.common.attrs import worker_name
    from tuner.config.build import open_spec_storage
    from tuner.runner.pool import check_pool_size, pool_argv, run_pool
    from tuner.runner.startup import configure_threads, preflight
    from tuner.runner.worker import run_worker
    from tuner.storages.leftovers import removed_on_failure
    from tuner.study.phases import PhaseBoard

    check_pool_size(workers)
    spec, url = _load(study, storage, set_)
    with removed_on_failure(url):  # a run that fails before its study exists leaves nothing
        opened = open_spec_storage(url, spec)
        if workers > 1:
            with PhaseBoard(opened, spec.study.name, worker_name()) as board:
                # Check and download once, here; the children then find the data ready.
                _, scan = preflight(
                    spec, opened, accept_space_change=accept_space_change, check=signals.check,
                    publish=board.set,
                )  # fmt: skip
                board.set(f"running {workers} workers")
                # The children read the storage from here; a password never goes in argv.
                os.environ["TUNER_STORAGE"] = url
                argv = pool_argv(study, set_ or [], n_trials, timeout, accept_space_change)
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
        )
        say(
            f"worker done: {report.ran} trials ({report.complete} complete, {report.pruned} "
            f"pruned, {report.failed} failed)"
        )
        return report.exit_code


@app.command()
def status(
    study: StudyOpt = "clothing",
    storage: StorageOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show trials by state, the best trial, the top 5 and the running trials."""
    from rich.console import Console

    from tuner.config.build import load_existing_study, open_spec_storage
    from tuner.errors import StudyError
    from tuner.results.export import best_result
    from tuner.results.status import render_status, summarize, workers_line

    spec, url = _load(study, storage, set_)
    found = load_existing_study(spec, open_spec_storage(url, spec, must_exist=True))
    summary = summarize(found)
    # Piped into a file or a script, the tables keep every column rather than 80 characters.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    Console(highlight=False, width=wide).print(*render_status(summary))
    if not summary.top and summary.alive:  # the tables still show what is queued or running
        raise StudyError(
            f"study {found.study_name!r} has no complete trial yet; {workers_line(summary)}; "
            f"run `tuner status --study {study}` again once a trial has finished"
        )
    if not summary.top:
        best_result(found)  # raises the one-line "no complete trial yet" error


@app.command()
def export(
    study: StudyOpt = "clothing",
    storage: StorageOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the result JSON here (default: print it)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Save the best trial as a complete Keras model (.keras)."),
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option("--plots", help="Write the learning-curve and search plots (PNG) here."),
    ] = None,
    mkdir: Annotated[
        bool,
        typer.Option("--mkdir", help="Create the folders of --out, --model and --plots."),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Export the best hyperparameters (JSON), the plots and the best model."""
    from tuner.config.build import (
        artifact_dir,
        load_existing_study,
        open_spec_storage,
        stored_spec,
    )
    from tuner.results.export import best_result, check_output, write_json, write_plots
    from tuner.results.model_export import write_model
    from tuner.space.params import format_params

    if model is not None and model.suffix != ".keras":
        raise TunerError(f"--model {model} must end in .keras; write it like --model best.keras")
    for path, option, folder in ((out, "--out", False), (model, "--model", False),
                                 (plots, "--plots", True)):  # fmt: skip
        if path is not None:
            check_output(path, option, folder=folder, mkdir=mkdir)
    spec, url = _load(study, storage, set_)
    found = load_existing_study(spec, open_spec_storage(url, spec, must_exist=True))
    result = best_result(found)
    spec = stored_spec(found, spec, set_ or [])
    extra: dict[str, object] = {}
    if plots is not None:
        for path in write_plots(found, plots):
            say(f"wrote {path}")
    if model is not None:
        extra = write_model(found, spec, artifact_dir(url, spec), model, say=say)
        say(f"wrote {model}")
    if out is None:
        typer.echo(json.dumps(result.to_json(spec, extra), indent=2))
    else:
        write_json(result, spec, out, extra)
        say(
            f"wrote {out}: best trial {result.best_trial}, "
            f"{format_params(result.best_params)}, val_acc {result.best_value:.4f}"
        )


@app.command()
def dashboard(
    study: StudyOpt = "clothing",
    storage: StorageOpt = None,
    set_: SetOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8080,
    debug: DebugOpt = False,
) -> None:
    """Serve optuna-dashboard for the study, safe to run beside the workers."""
    from tuner.results.dashboard import serve

    spec, url = _load(study, storage, set_)
    serve(spec, url, host=host, port=port)


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. clothing.")],
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Folder to create (default: data/<dataset folder>)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Download the archive from this mirror instead.")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Download and unpack a public dataset over HTTP."""
    from tuner.assets.datasets import DATASETS, download_dataset, scan_dataset
    from tuner.common.console import download_progress

    if name not in DATASETS:
        raise TunerError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    target = dest or Path("data") / DATASETS[name].folder.removesuffix("-master")
    with download_progress(name) as progress:
        download_dataset(name, target, url=url, progress=progress)
    scan = scan_dataset(target)
    say(
        f"downloaded {name} into {target}: {len(scan.class_names)} classes, "
        f"{scan.count('train')} train and {scan.count('validation')} validation images"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug and len(args) > 1:  # each command takes it, so move it behind the command
        args = [a for a in args if a != "--debug"] + ["--debug"]
    # Optuna logs each failed trial with a traceback; tuner prints its own reason line.
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        code = typer.main.get_command(app).main(
            args=args, prog_name="tuner", standalone_mode=False
        )
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("error: aborted", markup=False)
        return 130
    except _NO_ARGS_HELP as e:
        err_console.print(e.format_message(), markup=False)
        return 2
    except click_errors.UsageError as e:
        if debug:
            raise
        command = e.ctx.command_path if e.ctx else "tuner"
        message = " ".join(e.format_message().split()).rstrip(".")  # one line, always
        err_console.print(f"error: {message}; see `{command} --help`", markup=False)
        return 2
    except TunerError as e:
        if debug:
            traceback.print_exc()
        err_console.print(f"error: {e}", markup=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("error: interrupted", markup=False)
        return 130
    except Exception as e:
        if debug:
            raise
        err_console.print(
            f"error: internal error: {one_line(e)}; rerun with --debug and report it",
            markup=False,
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
