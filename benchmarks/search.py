"""How well each search strategy spends a training budget, over many seeds.

Two steps, as tabular HPO benchmarks do it (HPOBench, LCBench):

1. ``record``: train every configuration of a fine grid once, with tuner itself,
   and keep each one's per-epoch validation accuracy in a small JSON file under
   ``benchmarks/searchbench/`` (with the command that made it and each run's seed;
   a few configurations are trained twice, with other seeds, to show the
   run-to-run noise). ``scratch``: clothing-scratch at 31 learning rates (ten per
   decade over [1e-4, 1e-1], the four of the manual sweep among them).
   ``head``: learning rate x inner size x dropout on the cached features of a
   small CNN trained once on the training split and frozen.
2. ``replay``: every strategy runs through tuner's own study machinery (the
   spec's sampler and pruner, its warm start, the worker's trial loop and
   budget, see :func:`tuner.runner.worker.run_objective`), with an objective that
   answers from the recorded curves, for many sampler seeds. The table gives,
   per strategy and budget of epochs, the median and worst best validation
   accuracy over seeds, the share of seeds reaching the grid's best, and the
   epochs needed to get there; the plot shows best-so-far against epochs.

``live`` checks the replay against real training: the default strategy on
clothing-scratch for a few seeds, next to the replay's prediction.

Usage::

    python3 benchmarks/search.py record scratch --data ../shared/data/clothing-dataset-small
    python3 benchmarks/search.py record head --data ../shared/data/clothing-dataset-small
    python3 benchmarks/search.py replay scratch --seeds 20 --plot search-scratch.png
    python3 benchmarks/search.py live --seeds 0,1,2 --data ../shared/data/clothing-dataset-small
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from searchbench.curves import load_curves
from searchbench.record import log_grid, record_study
from searchbench.replay import Strategy, Trajectory, replay
from searchbench.report import console, markdown, plot, summarize, table

HERE = Path(__file__).resolve().parent / "searchbench"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"
EPOCHS = 10  # the manual sweep's epochs per learning rate
# Trained again with other seeds (the live grid run also repeats the manual sweep's four).
NOISE_RATES = [1e-4, 3.16228e-4, 1e-3, 3.16228e-3, 1e-2]
NOISE_SEED = 2234  # model.seed of the repeated runs: other seeds than the grid's

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
record_app = typer.Typer(no_args_is_help=True, help="Train a grid once and keep its curves.")
app.add_typer(record_app, name="record")

Data = Annotated[Path, typer.Option(help="the clothing dataset (train/, validation/)")]
Workdir = Annotated[
    Path | None, typer.Option(help="keep the recording's study and log here (default: a temp dir)")
]


@record_app.command("scratch")
def record_scratch(data: Data = DEFAULT_DATA, workdir: Workdir = None) -> None:
    """clothing-scratch, 10 epochs at each of 31 learning rates, five of them twice."""
    sets = [f"data.dir={data}", f"train.epochs={EPOCHS}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        grid = [{"learning_rate": lr} for lr in log_grid(1e-4, 1e-1, 10)]
        runs, command = record_study("clothing-scratch", grid, sets, folder, "scratch")
        noise = [{"learning_rate": lr} for lr in NOISE_RATES]
        repeats, noise_command = record_study(
            "clothing-scratch", noise, [*sets, f"model.seed={NOISE_SEED}"], folder, "scratch-noise"
        )
    _write(
        HERE / "scratch.json",
        {
            "study": "clothing-scratch",
            "epochs": EPOCHS,
            "made_by": "python3 benchmarks/search.py record scratch",
            "command": command,
            "noise_command": noise_command,
            "runs": runs,
            "repeats": repeats,
        },
    )


BUDGETS = [40, 80, 160]  # epochs: the manual sweep's (4 rates x 10 epochs), twice, four times
NO_PRUNING = "pruner.kind=none"
# The seed's manual sweep: its four rates, 10 epochs each, nothing else.
GRID = {
    "scratch": "search.warm_start=[1e-4, 1e-3, 1e-2, 1e-1]",
    "head": "search.warm_start=["
    + ", ".join(
        f"{{learning_rate = {lr}, size_inner = 0, droprate = 0.0}}"
        for lr in (1e-4, 1e-3, 1e-2, 1e-1)
    )
    + "]",
}


def strategies(study: str, kinds: list[str]) -> list[Strategy]:
    """The grid, then each sampler kind: with the spec's pruner, without pruning, and cold.

    The first two keep the spec's warm start (the points a user's study runs
    first); "cold" drops it, to show what the sampler finds on its own.
    """
    found = [Strategy("grid (manual sweep)", ("sampler.kind=grid", NO_PRUNING, GRID[study]))]
    for kind in kinds:
        found.append(Strategy(f"{kind}, median pruner", (f"sampler.kind={kind}",)))
        found.append(Strategy(f"{kind}, no pruning", (f"sampler.kind={kind}", NO_PRUNING)))
        found.append(
            Strategy(
                f"{kind}, median pruner, cold", (f"sampler.kind={kind}", "search.warm_start=[]")
            )
        )
    return found


@app.command("replay")
def replay_command(
    which: Annotated[str, typer.Argument(help="scratch or head: which recording to replay")],
    seeds: Annotated[int, typer.Option(help="sampler seeds 0 .. N-1")] = 20,
    first_seed: Annotated[
        int, typer.Option(help="the first seed (hidden seeds: another range)")
    ] = 0,
    samplers: Annotated[
        str, typer.Option(help="sampler kinds, comma-separated")
    ] = "random,tpe,gp,qmc",
    also: Annotated[
        list[str] | None,
        typer.Option(help='another strategy, "LABEL=KEY=VALUE;KEY=VALUE" (spec overrides)'),
    ] = None,
    plot_to: Annotated[
        Path | None, typer.Option("--plot", help="write the plot here (PNG)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write every trajectory here (JSON)")] = None,
) -> None:
    """Replay every strategy on a recording, for many seeds; print the table."""
    curves = load_curves(HERE / f"{which}.json")
    spec_name = curves.study
    kinds = [k.strip() for k in samplers.split(",") if k.strip()]
    budget = max(BUDGETS)
    runs: dict[str, list[Trajectory]] = {}
    for strategy in [*strategies(which, kinds), *map(_parse_strategy, also or [])]:
        seed_list = (
            [0] if strategy.name.startswith("grid") else range(first_seed, first_seed + seeds)
        )
        start = time.perf_counter()
        runs[strategy.name] = [replay(curves, strategy, s, budget) for s in seed_list]
        console.print(
            f"{strategy.name}: {len(seed_list)} seeds in {time.perf_counter() - start:.1f} s"
        )
    grid_best = runs["grid (manual sweep)"][0].best_within(budget)
    rows = summarize(runs, grid_best, BUDGETS)
    console.print(table(rows, grid_best, f"{spec_name}: best validation accuracy by epochs spent"))
    console.print(f"best recorded configuration: {curves.ceiling:.4f}")
    console.print(markdown(rows, grid_best), markup=False)
    if plot_to:  # the strategies above; --also ones are in the table only
        shown = {s.name for s in strategies(which, kinds)}
        plot(
            {name: paths for name, paths in runs.items() if name in shown},
            grid_best,
            budget,
            f"{spec_name}: best-so-far over seeds {first_seed}-{first_seed + seeds - 1}",
            plot_to,
        )
    if out:
        dump = {name: [vars(p) for p in paths] for name, paths in runs.items()}
        _write(out, {"grid_best": grid_best, "rows": rows, "runs": dump})


HEAD_RATES = log_grid(1e-4, 1e-1, 5)  # 16 rates, the manual sweep's four among them
HEAD_SIZES = [0, 10, 100, 1000]  # clothing-head's choices
HEAD_DROPS = [round(0.1 * k, 1) for k in range(9)]  # 0.0 .. 0.8, its step
HEAD_NOISE_SEED = 2234
HEAD_NOISE_RATES = [1e-4, 1e-3, 1e-2]


@record_app.command("head")
def record_head(data: Data = DEFAULT_DATA, workdir: Workdir = None) -> None:
    """clothing-head's space (16 rates x 4 inner sizes x 9 dropout rates) on a frozen small CNN."""
    from searchbench.head import BASE_EPOCHS, base_features, record_head_grid, sha256, train_base

    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        weights, scan, spec = train_base(data, folder)
        features = base_features(weights, scan, spec)
        grid = [
            {"learning_rate": lr, "size_inner": size, "droprate": drop}
            for lr in HEAD_RATES
            for size in HEAD_SIZES
            for drop in HEAD_DROPS
        ]
        sets = [f"data.dir={data}", f"train.epochs={EPOCHS}"]
        runs = record_head_grid(grid, sets, features, scan, spec.model.seed)
        noise = [
            p
            for p in grid
            if p["droprate"] in (0.0, 0.4) and p["learning_rate"] in HEAD_NOISE_RATES
        ]
        repeats = record_head_grid(noise, sets, features, scan, HEAD_NOISE_SEED)
        digest = sha256(weights)
    _write(
        HERE / "head.json",
        {
            "study": "clothing-head",
            "epochs": EPOCHS,
            "made_by": "python3 benchmarks/search.py record head",
            "base": f"small-cnn trained {BASE_EPOCHS} epochs on train/ at 64x64, frozen; "
            f"pooled 128 features; weights sha256 {digest}",
            "runs": runs,
            "repeats": repeats,
        },
    )


LIVE_TRIALS = 12  # four warm-start rates (24 epochs at least), then 8 more: at least 40 epochs


@app.command("live")
def live_command(
    seeds: Annotated[str, typer.Option(help="sampler seeds, comma-separated")] = "0,1,2",
    data: Data = DEFAULT_DATA,
    workdir: Workdir = None,
    budget: Annotated[int, typer.Option(help="the budget of epochs to compare at")] = 40,
) -> None:
    """The spec's default search against the grid on clothing-scratch, trained for real.

    Runs the grid once and the default (the spec as shipped, with 10 epochs per
    trial) once per seed, keeps them in ``searchbench/live.json`` (runs already
    there are reused), and prints each next to the replay's prediction.
    """
    from searchbench.live import live_run

    path = HERE / "live.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    sets = [f"data.dir={data}", f"train.epochs={EPOCHS}"]
    grid = strategies("scratch", [])[0]
    wanted = [("grid", [*sets, *grid.sets], 4)]
    wanted += [
        (f"default-seed{s}", [*sets, f"sampler.seed={s}"], LIVE_TRIALS) for s in _ints(seeds)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for tag, tag_sets, n in wanted:
            if tag in done:
                continue
            trajectory, record = live_run("clothing-scratch", tag_sets, n, folder, tag)
            done[tag] = {**record, "trajectory": vars(trajectory)}
            _write(path, done)  # kept at once: an interrupted run resumes
    _compare_live(done, budget)


def _compare_live(done: dict[str, Any], budget: int) -> None:
    curves = load_curves(HERE / "scratch.json")
    grid_live = Trajectory(**done["grid"]["trajectory"]).best_within(budget)
    grid_replay = replay(curves, strategies("scratch", [])[0], 0, budget).best_within(budget)
    default = Strategy("default", ())
    t = Table(title=f"clothing-scratch, live against replay, at {budget} epochs")
    for col in ("run", "live best", "replay best", "live >= live grid", "replay >= replay grid"):
        t.add_column(col, justify="left" if col == "run" else "right")
    t.add_row("grid", f"{grid_live:.4f}", f"{grid_replay:.4f}", "", "")
    for tag, run in done.items():
        if not tag.startswith("default-seed"):
            continue
        seed = int(tag.removeprefix("default-seed"))
        live = Trajectory(**run["trajectory"]).best_within(budget)
        predicted = replay(curves, default, seed, max(BUDGETS)).best_within(budget)
        t.add_row(tag, f"{live:.4f}", f"{predicted:.4f}", _yes(live >= grid_live),
                  _yes(predicted >= grid_replay))  # fmt: skip
    console.print(t)


def _parse_strategy(text: str) -> Strategy:
    label, sep, sets = text.partition("=")
    if not sep or not label.strip():
        raise typer.BadParameter(f"{text!r}: write it as LABEL=KEY=VALUE;KEY=VALUE")
    return Strategy(label.strip(), tuple(s.strip() for s in sets.split(";") if s.strip()))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _write(path: Path, content: dict[str, object]) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    app()
