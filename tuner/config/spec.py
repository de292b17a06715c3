"""Study specs: a typed, frozen dataclass tree loaded from ``studies/NAME.toml``.

Precedence is explicit: a ``--set KEY=VALUE`` override beats the spec file,
which beats the dataclass default. Every error names the file and the key.
The search space is open: ``[search.NAME]`` declares a hyperparameter (see
:mod:`tuner.space.params`); ``learning_rate`` is always one of them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from tuner.assets.settings import DataSettings
from tuner.config import values as spec_values
from tuner.config.checks import PRUNER_KINDS, validate
from tuner.config.files import available_studies, find_spec_file, worker_command
from tuner.errors import SpecError
from tuner.recipes.settings import ModelSettings
from tuner.space.params import Param, Space
from tuner.space.tables import parse_param, parse_warm_start
from tuner.storages.settings import StorageSettings
from tuner.study.settings import ObjectiveSettings, PrunerSettings, SamplerSettings
from tuner.training.settings import CacheSettings, TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "PRUNER_KINDS",
    "StudySpec",
    "available_studies",
    "find_spec_file",
    "load_spec",
    "parse_override",
    "spec_from_dict",
    "spec_to_dict",
    "worker_command",
]

LEARNING_RATE = {"low": 1e-4, "high": 1e-1, "log": True}  # the manual sweep's range
WARM_RATES = (1e-4, 1e-3, 1e-2, 1e-1)  # the manual sweep's four rates


@dataclass(frozen=True)
class StudySection:
    name: str = ""
    storage: str = ""


# The sections that lower layers own, under the names the spec has always used for them.
DataSection = DataSettings
ModelSection = ModelSettings
TrainSection = TrainSettings
SamplerSection = SamplerSettings
PrunerSection = PrunerSettings
CacheSection = CacheSettings
StorageSection = StorageSettings


def _default_space() -> Space:
    return Space([parse_param("learning_rate", dict(LEARNING_RATE), "default")])


@dataclass(frozen=True)
class SearchSection:
    """The trial budget, the points to try first, and the space: one Param per [search.NAME]."""

    n_trials: int = 20
    warm_start: tuple[dict[str, Any], ...] = tuple({"learning_rate": r} for r in WARM_RATES)
    space: Space = field(default_factory=_default_space)

    def __hash__(self) -> int:  # the points are dicts; hash them as JSON
        return hash((self.n_trials, json.dumps(self.warm_start, sort_keys=True), self.space))

    def __getattr__(self, name: str) -> Param:
        # spec.search.learning_rate reads as before: the Param, with .low, .high and .log
        space = self.__dict__.get("space")
        if space is not None and name in space:
            return space[name]  # type: ignore[no-any-return]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class StudySpec:
    """A whole study: what to train, what to search, and where to store it."""

    study: StudySection = field(default_factory=StudySection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    search: SearchSection = field(default_factory=SearchSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    pruner: PrunerSection = field(default_factory=PrunerSection)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    cache: CacheSection = field(default_factory=CacheSection)
    storage: StorageSection = field(default_factory=StorageSection)
    spec_file: str = field(default="", compare=False)


def _build_search(raw: dict[str, Any], where: str, prefix: str, origins: dict[str, str]) -> Any:
    """``[search]``: ``n_trials``, ``warm_start``, and one table per hyperparameter."""
    tables = {k: v for k, v in raw.items() if k not in ("n_trials", "warm_start")}
    lr = tables.pop("learning_rate", {})
    if isinstance(lr, dict) and "choices" not in lr and "type" not in lr:
        lr = {**LEARNING_RATE, **lr}  # keys left out keep the manual sweep's range
    tables = {"learning_rate": lr, **tables}
    known = [*tables, "n_trials", "warm_start"]
    params = [
        parse_param(name, table, spec_values.origin_of(prefix + name, origins, where), known)
        for name, table in tables.items()
    ]
    space = Space(params)
    n_trials = SearchSection.n_trials
    if "n_trials" in raw:
        here = origins.get(prefix + "n_trials", where)
        n_trials = spec_values.convert(int, raw["n_trials"], here, "search.n_trials", "")
    warm = raw.get("warm_start", list(WARM_RATES))
    here = spec_values.origin_of(prefix + "warm_start", origins, where)
    return SearchSection(n_trials, parse_warm_start(warm, space, here), space)


BUILDERS = {SearchSection: _build_search}


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set KEY=VALUE``; the value is read as TOML, else kept as a string."""
    return spec_values.parse_override(text, StudySpec)


def load_spec(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study spec, apply ``--set`` overrides and validate it.

    Args:
        name_or_path: a study name found under ``studies/``, or a path to a TOML file.
        overrides: ``KEY=VALUE`` strings with dotted keys, such as ``train.epochs=2``.

    Returns:
        The validated, frozen spec.

    Raises:
        SpecError: naming the file and the key that is wrong.
    """
    path = find_spec_file(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: TOML syntax error: {e}; fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read study spec {path}: {e}") from None
    origins: dict[str, str] = {}  # dotted key -> where its value came from, for errors
    for text in overrides:
        key, value = parse_override(text)
        spec_values.set_dotted(raw, key, value, f"--set {key}")
        origins[key] = f"{path} with --set {text}"
    spec = spec_values.build(StudySpec, raw, str(path), "", origins, BUILDERS)
    if not spec.study.name:
        if "study.name" in origins:
            raise SpecError(
                f"{origins['study.name']}: study.name is empty; give the study a name, "
                f"or leave it out to use {path.stem!r}"
            )
        spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, name=path.stem))
    spec = dataclasses.replace(spec, spec_file=str(path))
    validate(spec, str(path), origins)
    return spec


def spec_from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), where: str = "stored spec"
) -> StudySpec:
    """Rebuild a spec from :func:`spec_to_dict` data, then apply ``--set`` overrides."""
    raw = json.loads(json.dumps(data))  # a deep copy
    for text in overrides:
        key, value = parse_override(text)
        spec_values.set_dotted(raw, key, value, f"--set {key}")
    spec = spec_values.build(StudySpec, raw, where, "", builders=BUILDERS)
    validate(spec, where)
    return spec  # type: ignore[no-any-return]


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """The spec as plain data (lists, not tuples), for JSON and notes; it reads back as TOML."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    data: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name == "spec_file":
            continue
        section = getattr(spec, f.name)
        if isinstance(section, SearchSection):
            data[f.name] = {
                "n_trials": section.n_trials,
                # a point of the learning rate alone is written as before: the bare rate
                "warm_start": [
                    p["learning_rate"] if list(p) == ["learning_rate"] else dict(p)
                    for p in section.warm_start
                ],
                **section.space.to_json(),
            }
        else:
            data[f.name] = dataclasses.asdict(section)
    return plain(data)  # type: ignore[no-any-return]
