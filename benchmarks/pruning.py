"""What pruning saves and what it costs, measured on the clothing-scratch study.

Every configuration (a pruner kind and a sampler seed) is one ``tuner worker``
run with the same trial budget, on a fresh SQLite file, with
``TUNER_WORKER_INDEX=0`` so that the sampler's seed is exactly ``sampler.seed``.
Pruners share seeds, so each one meets the same warm-start grid and the same
sampler stream. Per run it records:

- ``epochs``: the epochs trained, the sum of ``len(intermediate_values)`` over trials;
- ``wall_s``: the wall time of the worker process;
- ``best_value`` / ``best_lr``: the study's best trial (validation accuracy after
  its last epoch, and its learning rate);
- ``best_pruned``: whether the trial with the highest last-reported validation
  accuracy, counting pruned trials at the epoch they stopped, ended PRUNED;
- ``pruned_leaders``: pruned trials whose validation accuracy at the epoch they
  were stopped was at least the best trial's at that epoch, so they looked as
  good as the winner when they were cut;
- ``winner_cut``: whether the run pruned the trial that won the no-pruning run of
  the same seed (see :func:`winner_cut`); "-" where the sampler went elsewhere.

Finished runs are written to ``--out`` at once and reused on the next
invocation when their configuration is unchanged, so an interrupted benchmark
resumes, and changing one pruner's settings reruns only that pruner.

Usage::

    python3 benchmarks/pruning.py --pruners none,median --seeds 0,1,2 --out pruning.json
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from tuner.config.spec import StudySpec, load_spec

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"
# The settings each kind reads; a run is reused only when these are unchanged.
SETTINGS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps"),
    "percentile": ("n_startup_trials", "n_warmup_steps", "percentile"),
    "patient": ("n_startup_trials", "n_warmup_steps", "patience"),
    "hyperband": ("min_resource", "reduction_factor"),
    "successive-halving": ("min_resource", "reduction_factor"),
}
console = Console(highlight=False, width=160)  # a log file is no terminal: keep tables whole


def run_key(spec: StudySpec, data: Path, seed: int, trials: int) -> dict[str, Any]:
    """Everything that decides a run's outcome; equal keys mean a run can be reused."""
    p = spec.pruner
    return {
        "study": spec.study.name,
        "data": str(data),
        "kind": p.kind,
        "pruner": {name: getattr(p, name) for name in SETTINGS[p.kind]},
        "seed": seed,
        "trials": trials,
        "epochs": spec.train.epochs,
        "image_size": list(spec.data.image_size),
        "batch_size": spec.data.batch_size,
        "recipe": spec.model.recipe,
        "warm_start": list(spec.search.warm_start),
    }


def _last(trial: FrozenTrial) -> float:
    values = trial.intermediate_values
    return values[max(values)] if values else -math.inf


def summarize(study: optuna.Study) -> dict[str, Any]:
    """The measures of one finished run, read back from its study."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    leader = max(trials, key=_last)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    ahead = [
        t.number
        for t in pruned
        if best is not None
        and (step := max(t.intermediate_values, default=-1)) in best.intermediate_values
        and t.intermediate_values[step] >= best.intermediate_values[step]
    ]
    return {
        "epochs": sum(len(t.intermediate_values) for t in trials),
        # NaN when every trial was pruned: there is no best trial to speak of.
        "best_value": best.value if best else math.nan,
        "best_lr": best.params["learning_rate"] if best else math.nan,
        "best_trial": best.number if best else None,
        "best_pruned": leader.state == TrialState.PRUNED,
        "pruned_leaders": ahead,
        "states": {
            s.name: sum(t.state == s for t in trials) for s in TrialState if s.is_finished()
        },
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "learning_rate": t.params.get("learning_rate"),
                "val_accuracy": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            }
            for t in trials
        ],
    }


def run_one(
    study_name: str, sets: list[str], tag: str, seed: int, trials: int, workdir: Path
) -> dict[str, Any]:
    """One ``tuner worker`` run on a fresh SQLite file; returns its measures."""
    db = workdir / f"{tag}.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", study_name, "--storage", url]
    cmd += [f"--n-trials={trials}", f"--set=sampler.seed={seed}", *(f"--set={s}" for s in sets)]
    env = {**os.environ, "TUNER_WORKER_INDEX": "0"}
    log = workdir / f"{tag}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise SystemExit(f"error: run {tag} exited with {code}; see {log}:\n{tail}")
    name = load_spec(study_name, sets).study.name
    study = optuna.load_study(study_name=name, storage=url)
    return {"wall_s": round(wall, 1), **summarize(study)}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def winner_cut(run: dict[str, Any], none_run: dict[str, Any]) -> bool | None:
    """Whether ``run`` pruned the trial that won the no-pruning run of the same seed.

    A trial's result depends only on its number and learning rate, so when ``run``
    holds the winner's number at the winner's rate (always so for the warm-start
    grid, and until pruning first steers the sampler elsewhere) it is the very same
    training. None when the sampler took ``run`` to another rate at that number.
    """
    number = none_run["best_trial"]
    rate = none_run["trials"][number]["learning_rate"]
    twin = next((t for t in run["trials"] if t["number"] == number), None)
    if twin is None or not math.isclose(twin["learning_rate"], rate, rel_tol=1e-12):
        return None
    return twin["state"] == "PRUNED"


def aggregate(runs: list[dict[str, Any]], kinds: list[str]) -> dict[str, dict[str, Any]]:
    """Per pruner: means over seeds, and epochs relative to no pruning at the same seeds."""
    base = {r["key"]["seed"]: r for r in runs if r["key"]["kind"] == "none"}
    summary: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        mine = [r for r in runs if r["key"]["kind"] == kind]
        paired = [r for r in mine if r["key"]["seed"] in base]
        for r in paired:
            none_run = base[r["key"]["seed"]]
            r["winner_cut"] = None if r is none_run else winner_cut(r, none_run)
        cuts = [r["winner_cut"] for r in paired if r["winner_cut"] is not None]
        summary[kind] = {
            "seeds": [r["key"]["seed"] for r in mine],
            "epochs": _mean([r["epochs"] for r in mine]),
            "epochs_vs_none": _mean(
                [r["epochs"] / base[r["key"]["seed"]]["epochs"] for r in paired]
            ),
            "wall_s": _mean([r["wall_s"] for r in mine]),
            "best_value": _mean([r["best_value"] for r in mine]),
            "best_vs_none": _mean(
                [r["best_value"] - base[r["key"]["seed"]]["best_value"] for r in paired]
            ),
            "best_lr_geomean": math.exp(_mean([math.log(r["best_lr"]) for r in mine])),
            "best_pruned": _mean([float(r["best_pruned"]) for r in mine]),
            "pruned_leaders": sum(len(r["pruned_leaders"]) for r in mine),
            "pruned": _mean([r["states"]["PRUNED"] for r in mine]),
            "winner_cut": f"{sum(cuts)}/{len(cuts)}" if cuts else "-",
        }
    return summary


def print_table(runs: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> None:
    """One row per pruner (mean over seeds), then one per run."""
    table = Table(title="Pruners on clothing-scratch (mean over seeds)")
    for col in ("pruner", "seeds", "epochs", "vs none", "wall s", "best val acc", "vs none",
                "lr (geo. mean)", "pruned", "best pruned", "pruned leaders",
                "none's winner cut"):  # fmt: skip
        table.add_column(col, justify="left" if col == "pruner" else "right")

    def vs(value: float, text: str) -> str:  # "-" where no none run of the same seeds exists
        return "-" if math.isnan(value) else text

    for kind, s in summary.items():
        table.add_row(
            kind, str(len(s["seeds"])), f"{s['epochs']:.1f}",
            vs(s["epochs_vs_none"], f"{s['epochs_vs_none']:.0%}"), f"{s['wall_s']:.0f}",
            f"{s['best_value']:.3f}", vs(s["best_vs_none"], f"{100 * s['best_vs_none']:+.1f} pt"),
            f"{s['best_lr_geomean']:.2g}", f"{s['pruned']:.1f}", f"{s['best_pruned']:.0%}",
            str(s["pruned_leaders"]), s["winner_cut"],
        )  # fmt: skip
    console.print(table)
    runs_table = Table(title="Per run")
    for col in ("pruner", "seed", "epochs", "wall s", "best val acc", "best lr", "best trial",
                "complete/pruned", "best pruned", "pruned leaders",
                "none's winner cut"):  # fmt: skip
        runs_table.add_column(col, justify="left" if col == "pruner" else "right")
    for r in sorted(runs, key=lambda r: (list(summary).index(r["key"]["kind"]), r["key"]["seed"])):
        runs_table.add_row(
            r["key"]["kind"], str(r["key"]["seed"]), str(r["epochs"]), f"{r['wall_s']:.0f}",
            f"{r['best_value']:.3f}", f"{r['best_lr']:.2g}", str(r["best_trial"]),
            f"{r['states']['COMPLETE']}/{r['states']['PRUNED']}",
            "yes" if r["best_pruned"] else "no", ",".join(map(str, r["pruned_leaders"])) or "-",
            {True: "yes", False: "no"}.get(r.get("winner_cut"), "-"),
        )  # fmt: skip
    console.print(runs_table)


def main(
    data: Annotated[Path, typer.Option(help="The dataset folder (train/, validation/).")] = (
        DEFAULT_DATA
    ),
    study: Annotated[str, typer.Option(help="The study spec to benchmark.")] = "clothing-scratch",
    pruners: Annotated[str, typer.Option(help="Comma-separated pruner kinds.")] = "none,median",
    seeds: Annotated[str, typer.Option(help="Comma-separated sampler seeds.")] = "0,1,2",
    trials: Annotated[int, typer.Option(help="Trials per run.")] = 12,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Extra KEY=VALUE spec overrides.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Results JSON; its runs are reused.")] = Path(
        "pruning.json"
    ),
    fresh: Annotated[bool, typer.Option(help="Rerun every configuration.")] = False,
    table_only: Annotated[
        bool, typer.Option(help="Run nothing; tabulate the matching runs already in --out.")
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the run databases and logs here.")
    ] = None,
) -> None:
    """Run each pruner at each seed with the same trial budget and compare them."""
    if not (data / "train").is_dir():
        raise SystemExit(f"error: {data} has no train/ folder; pass the dataset with --data PATH")
    kinds = [k.strip() for k in pruners.split(",") if k.strip()]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    old = json.loads(out.read_text())["runs"] if out.is_file() and not fresh else []
    with tempfile.TemporaryDirectory(prefix="tuner-pruning-") as tmp:
        folder = workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        runs = collect(
            study, data, kinds, seed_list, trials, set_ or [], old, out, folder, table_only
        )
    summary = aggregate(runs, kinds)
    print_table(runs, summary)
    _save(out, old, runs, summary)
    console.print(f"results written to {out}")


def collect(
    study: str,
    data: Path,
    kinds: list[str],
    seeds: list[int],
    trials: int,
    sets: list[str],
    old: list[dict[str, Any]],
    out: Path,
    folder: Path,
    table_only: bool = False,
) -> list[dict[str, Any]]:
    """Every (kind, seed) run: reused from ``old`` when its key matches, else run and saved.

    With ``table_only``, a run missing from ``old`` is skipped rather than run.
    """
    runs: list[dict[str, Any]] = []
    for kind in kinds:
        for seed in seeds:
            run_sets = [f"data.dir={data}", *sets, f"pruner.kind={kind}"]
            key = run_key(load_spec(study, run_sets), data, seed, trials)
            if (done := next((r for r in old if r["key"] == key), None)) is not None:
                console.print(f"{kind} seed {seed}: reused from {out}")
                runs.append(done)
                continue
            if table_only:
                continue
            console.print(f"{kind} seed {seed}: running {trials} trials (log in {folder})")
            r = {"key": key, **run_one(study, run_sets, f"{kind}-s{seed}", seed, trials, folder)}
            runs.append(r)
            console.print(
                f"{kind} seed {seed}: {r['epochs']} epochs, {r['wall_s']:.0f} s, "
                f"best {r['best_value']:.3f} at lr {r['best_lr']:.2g}"
            )
            _save(out, old, runs)  # at once, so that an interrupted benchmark resumes
    return runs


def _save(
    out: Path,
    old: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    summary: dict[str, Any] | None = None,
) -> None:
    keys = [r["key"] for r in runs]
    kept = [r for r in old if r["key"] not in keys]  # runs of other pruners and seeds stay
    out.write_text(json.dumps({"runs": kept + runs, "summary": summary or {}}, indent=1))


if __name__ == "__main__":
    typer.run(main)
