"""The search benchmark's table and plot, from replayed trajectories."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from searchbench.replay import Trajectory

__all__ = ["plot", "summarize", "table"]

console = Console(highlight=False, width=160)


def summarize(
    runs: dict[str, list[Trajectory]], grid_best: float, budgets: list[int]
) -> list[dict[str, Any]]:
    """Per strategy and budget: median and worst best, share reaching the grid, epochs to it."""
    rows = []
    for name, paths in runs.items():
        reach = [p.epochs_to_reach(grid_best) for p in paths]
        for budget in budgets:
            bests = [p.best_within(budget) for p in paths]
            rows.append(
                {
                    "strategy": name,
                    "budget": budget,
                    "seeds": len(paths),
                    "median": statistics.median(bests),
                    "worst": min(bests),
                    "mean": statistics.fmean(bests),
                    "reach_grid": sum(b >= grid_best for b in bests) / len(bests),
                    "epochs_to_grid": _median_epochs(reach, budget),
                }
            )
    return rows


def _median_epochs(reach: list[int | None], budget: int) -> float:
    """Median epochs to the grid's best; a seed that never got there counts as infinite."""
    return statistics.median([r if r is not None and r <= budget else math.inf for r in reach])


def table(rows: list[dict[str, Any]], grid_best: float, title: str) -> Table:
    t = Table(title=f"{title} (grid's best: {grid_best:.4f})")
    for col in ("strategy", "budget", "seeds", "median best", "vs grid", "worst best",
                "reach grid's best", "epochs to grid's best (median)"):  # fmt: skip
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        epochs = r["epochs_to_grid"]
        t.add_row(
            r["strategy"],
            str(r["budget"]),
            str(r["seeds"]),
            f"{r['median']:.4f}",
            f"{100 * (r['median'] - grid_best):+.1f} pt",
            f"{r['worst']:.4f}",
            f"{100 * r['reach_grid']:.0f}%",
            "never" if math.isinf(epochs) else f"{epochs:g}",
        )
    return t


def markdown(rows: list[dict[str, Any]], grid_best: float) -> str:
    """The table as Markdown for the README: one row per strategy, the budgets side by side."""
    budgets = sorted({r["budget"] for r in rows})
    b = " / ".join(str(x) for x in budgets)
    lines = [
        f"| strategy | median best at {b} epochs | worst best | reach the grid's best "
        "| epochs to the grid's best (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(r["strategy"], []).append(r)
    for name, mine in by_name.items():
        mine.sort(key=lambda r: r["budget"])
        epochs = mine[-1]["epochs_to_grid"]
        medians = " / ".join(f"{r['median']:.3f}" for r in mine)
        worst = " / ".join(f"{r['worst']:.3f}" for r in mine)
        reach = " / ".join(f"{100 * r['reach_grid']:.0f}%" for r in mine)
        to_grid = "never" if math.isinf(epochs) else f"{epochs:g}"
        lines.append(f"| {name} | {medians} | {worst} | {reach} | {to_grid} |")
    lines.append(f"\nThe grid's best: {grid_best:.3f}.")
    return "\n".join(lines)


def plot(
    runs: dict[str, list[Trajectory]], grid_best: float, budget: int, title: str, path: Path
) -> None:
    """Best-so-far against epochs spent: the median over seeds and its 10-90% band.

    Two panels: the strategies with the spec's pruner, and those without pruning.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    xs = list(range(0, budget + 1, 2))
    colors: dict[str, str] = {}
    for ax, pruned in zip(axes, (True, False), strict=True):
        for name, paths in runs.items():
            if name.startswith("grid") or ("no pruning" in name) == pruned:
                continue
            columns = list(zip(*[[p.best_within(x) for x in xs] for p in paths], strict=True))
            kind = name.split(",")[0]
            style = ":" if "cold" in name else "-"
            (line,) = ax.plot(xs, [statistics.median(c) for c in columns], style,
                              color=colors.get(kind), label=name, linewidth=1.6)  # fmt: skip
            colors.setdefault(kind, line.get_color())
            low = [_quantile(c, 0.1) for c in columns]
            high = [_quantile(c, 0.9) for c in columns]
            alpha = 0.05 if "cold" in name else 0.12
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=alpha, linewidth=0)
        ax.axhline(grid_best, color="black", linewidth=1, linestyle="--", label="grid's best")
        ax.axvline(40, color="grey", linewidth=0.6)
        ax.set_title("with the median pruner" if pruned else "without pruning", fontsize=10)
        ax.set_xlabel("epochs spent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("best validation accuracy so far (median, 10-90% band)")
    axes[0].set_ylim(bottom=max(0.0, grid_best - 0.2), top=min(1.0, grid_best + 0.08))
    fig.suptitle(title)
    fig.savefig(path, bbox_inches="tight")
    console.print(f"wrote {path}")


def _quantile(values: tuple[float, ...], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
