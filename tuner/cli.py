"""The ``tuner`` command: a thin shell that parses arguments and calls the library.

Every user error becomes one ``error: ...`` line on stderr and exit code 2;
``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import enum
import json
import logging
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
cache_app = typer.Typer(
    help="List and prune the cache: frozen-base features per image (shared by studies) and "
    "images decoded for the full pipeline.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

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


class LogFormat(str, enum.Enum):
    """How a worker stamps its progress lines (see tuner.common.console)."""

    time = "time"
    iso = "iso"
    plain = "plain"


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
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="TUNER_LOG_FORMAT",
            show_envvar=True,
            help="How each progress line is stamped: time (13:45:02), iso "
            "(2026-12-05T13:45:02+0000) or plain (no stamp).",
        ),
    ] = LogFormat.time,
    debug: DebugOpt = False,
) -> None:
    """Run trials of a study until it holds --n-trials finished trials. Ctrl-C stops cleanly."""
    os.environ["TUNER_LOG_FORMAT"] = log_format.value  # the pool's children inherit it
    from tuner.runner.launch import launch
    from tuner.runner.pool import check_pool_size
    from tuner.runner.signals import Interrupted

    signals = _SIGNALS
    with signals.installed():
        try:
            check_pool_size(workers)  # before the spec: a wrong count is said first
            spec, url = _load(study, storage, set_)
            code = launch(spec, url, study_arg=study, overrides=set_ or [], n_trials=n_trials,
                          timeout=timeout, workers=workers,
                          accept_space_change=accept_space_change, signals=signals)  # fmt: skip
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


@app.command()
def status(
    study: StudyOpt = "clothing",
    storage: StorageOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show trials by state, the best trial, the top 5 and the running trials."""
    from rich.console import Console

    from tuner.results.commands import show_status

    spec, url = _load(study, storage, set_)
    # Piped into a file or a script, the tables keep every column rather than 80 characters.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    show_status(spec, url, Console(highlight=False, width=wide), study_arg=study)


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
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite outputs that exist (refused otherwise)."),
    ] = False,
    no_test: Annotated[
        bool,
        typer.Option(
            "--no-test", help="Check the exported model on the validation split only, not test/."
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Export the best hyperparameters (JSON), the plots and the best model."""
    from tuner.results.commands import export_study

    spec, url = _load(study, storage, set_)
    result = export_study(spec, url, overrides=set_ or [], out=out, model=model, plots=plots,
                          mkdir=mkdir, force=force, test=not no_test, say=say)  # fmt: skip
    if result is not None:
        typer.echo(json.dumps(result, indent=2))


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
    from tuner.results.commands import dashboard as serve

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


CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The cache folder (a spec's cache.dir). Default: $TUNER_CACHE_DIR, else "
        "$XDG_CACHE_HOME/tuner (~/.cache/tuner).",
    ),
]


def _cache_dir(folder: Path | None) -> Path:
    from tuner.training.feature_store import default_cache_dir

    return (folder or default_cache_dir()).expanduser()


@cache_app.command("list")
def cache_list(folder: CacheDirOpt = None, debug: DebugOpt = False) -> None:
    """List the cache's entries: model part, images, size, age and the studies using them."""
    from tuner.results.cache_entries import entry_lines, list_entries

    where = _cache_dir(folder)
    for line in entry_lines(list_entries(where), where):
        typer.echo(line)


@cache_app.command("prune")
def cache_prune(
    folder: CacheDirOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            min=0,
            metavar="DAYS",
            help="Also drop the features of studies last run more than DAYS days ago.",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Remove the features no study uses: images that left the data, studies whose storage
    file or study is gone, and entries of the earlier whole-dataset layout (1); and the
    decoded images of the full pipeline, which a worker decodes again in seconds."""
    from tuner.results.cache_entries import prune, prune_lines

    where = _cache_dir(folder)
    report = prune(where, dry_run=dry_run, older_than_days=older_than)
    for line in prune_lines(report, where, dry_run=dry_run):
        typer.echo(line)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug and len(args) > 1:  # each command takes it, so move it behind the command
        args = [a for a in args if a != "--debug"] + ["--debug"]
    # Optuna logs each failed trial with a traceback; tuner prints its own reason line.
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # SQLAlchemy's pool logs a traceback when it cannot roll back a connection that an
    # outage broke; tuner's storage watch says what happened in one line instead.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.DEBUG if debug else logging.CRITICAL)
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
