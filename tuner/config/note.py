"""The study note that optuna-dashboard shows: what is tuned, on what, and how to export it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.space.params import format_params

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec

__all__ = ["SAMPLER_NAMES", "study_note"]

# Optuna's sampler behind each sampler.kind, as the note names it.
SAMPLER_NAMES = {
    "tpe": "TPE sampler",
    "gp": "Gaussian-process sampler",
    "random": "random sampler",
    "qmc": "quasi-Monte Carlo sampler",
    "grid": "grid (the warm-start points only)",
}


def _data(spec: StudySpec) -> str:
    if spec.data.recipe:
        return f"on the data of `{spec.data.recipe}`"
    h, w = spec.data.image_size
    return f"(weights: `{spec.model.weights}`) on `{spec.data.dir}` at {h}x{w}"


def study_note(spec: StudySpec, now: str = "") -> str:
    """The note's Markdown; ``now`` is a line about what the workers are doing, if any."""
    space = spec.search.space
    params = "\n".join(f"  - {p.describe()}" for p in space.values())
    warm = "\n".join(f"  - {format_params(point)}" for point in spec.search.warm_start)
    base = (
        f" on the frozen `{spec.model.base}` base"
        if spec.model.recipe != "small-cnn" and not spec.data.recipe
        else ""
    )
    now = f"> **Now:** {now}\n\n" if now else ""
    sampler = SAMPLER_NAMES.get(spec.sampler.kind, spec.sampler.kind)
    o, n = spec.objective, spec.study.name
    epoch = "the last epoch's" if o.reduce == "last" else "the best epoch's"
    objective = ", ".join(f"{d} `{m}`" for m, d in zip(o.names, o.ways, strict=False))
    objective += f", {epoch}" + (f", within a gap of {o.max_gap:g}" if o.max_gap else "")
    return f"""# {spec.study.name}

{now}Tunes {", ".join(f"`{n}`" for n in space)} of the `{spec.model.recipe}` recipe{base}
{_data(spec)}, {spec.train.epochs} epochs per trial, batch {spec.data.batch_size}.

- Search space, {sampler} (seed {spec.sampler.seed}):
{params}
- Warm start, each point once:
{warm or "  - none"}
- Pruner: `{"none (two objectives)" if o.multi else spec.pruner.kind}`; objective: {objective}.
- Trial attributes: `train_accuracy`, `val_loss`, `gap`, `epoch_seconds`, `cache`, `worker`.

Export the result with:

    tuner export --study {n} --out {n}.json --plots {n}-plots --model {n}.keras
"""
