"""Study specs: a typed, frozen dataclass tree loaded from ``studies/NAME.toml``.

Precedence is explicit: a ``--set KEY=VALUE`` override beats the spec file,
which beats the dataclass default. Every error names the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "PRUNER_KINDS",
    "RECIPES",
    "StudySpec",
    "available_studies",
    "find_spec_file",
    "load_spec",
    "parse_override",
    "spec_from_dict",
    "spec_to_dict",
]

PRUNER_KINDS = ("none", "median", "percentile", "hyperband", "patient", "successive-halving")
RECIPES = ("xception-head", "small-cnn")


@dataclass(frozen=True)
class StudySection:
    name: str = ""
    storage: str = ""


@dataclass(frozen=True)
class DataSection:
    dir: str = "data"
    source: str = ""
    url: str = ""  # another address for the source's archive (a mirror)
    image_size: tuple[int, int] = (150, 150)
    batch_size: int = 32
    skip_bad_files: bool = False
    augment: bool = False


@dataclass(frozen=True)
class ModelSection:
    recipe: str = "xception-head"
    weights: str = "imagenet"
    download_timeout: float = 30.0  # seconds a stalled weights download may wait
    trainable_base: bool = False
    seed: int = 1234


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 10


@dataclass(frozen=True)
class LearningRate:
    low: float = 1e-4
    high: float = 1e-1
    log: bool = True


@dataclass(frozen=True)
class SearchSection:
    n_trials: int = 20
    warm_start: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    learning_rate: LearningRate = field(default_factory=LearningRate)


@dataclass(frozen=True)
class SamplerSection:
    seed: int = 42
    n_startup_trials: int = 4


@dataclass(frozen=True)
class PrunerSection:
    kind: str = "median"
    n_startup_trials: int = 4
    n_warmup_steps: int = 2
    percentile: float = 25.0
    min_resource: int = 1
    reduction_factor: int = 3
    patience: int = 2


@dataclass(frozen=True)
class CacheSection:
    enabled: bool = True
    dir: str = ""


@dataclass(frozen=True)
class StorageSection:
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retry: int = 3
    busy_timeout: float = 60.0
    connect_timeout: float = 10.0
    outage_tolerance: float = 120.0
    artifacts: str = ""


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
    cache: CacheSection = field(default_factory=CacheSection)
    storage: StorageSection = field(default_factory=StorageSection)
    spec_file: str = field(default="", compare=False)


def _studies_dirs() -> list[Path]:
    dirs = [Path.cwd() / "studies"]
    if env := os.environ.get("TUNER_STUDIES_DIR"):
        dirs.insert(0, Path(env))
    packaged = Path(__file__).parent / "_studies"
    repo = Path(__file__).resolve().parent.parent / "studies"
    dirs += [d for d in (packaged, repo) if d not in dirs]
    return dirs


def available_studies() -> list[str]:
    """Names of the study specs that ``--study NAME`` can find."""
    names = {p.stem for d in _studies_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def find_spec_file(name_or_path: str) -> Path:
    """Resolve ``--study`` to a spec file: a path, or a name under ``studies/``.

    Raises:
        SpecError: when nothing matches; the message lists the known studies.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or os.sep in name_or_path:
        if path.is_file():
            return path
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise SpecError(f"study spec file {path} {what}; check the path")
    for d in _studies_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_studies()) or "none"
    raise SpecError(
        f"unknown study {name_or_path!r}; available studies: {known} "
        "(or pass a path to a .toml spec file)"
    )


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set KEY=VALUE``; the value is read as TOML, else kept as a string.

    A string key keeps the text as given: ``data.dir=2024`` names a folder, not a number.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set {text!r} is not KEY=VALUE; write it like --set train.epochs=2")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw
    return key, raw if _hint_at(key) is str and not isinstance(value, str) else value


def _hint_at(key: str) -> Any:
    """The type of the spec field at a dotted key, or None when there is none."""
    node: Any = StudySpec
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints or part == "spec_file":
            return None
        node = hints[part]
    return node


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
        _set_dotted(raw, key, value, f"--set {key}")
        origins[key] = f"{path} with --set {text}"
    spec = _build(StudySpec, raw, where=str(path), prefix="", origins=origins)
    if not spec.study.name:
        if "study.name" in origins:
            raise SpecError(
                f"{origins['study.name']}: study.name is empty; give the study a name, "
                f"or leave it out to use {path.stem!r}"
            )
        spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, name=path.stem))
    spec = dataclasses.replace(spec, spec_file=str(path))
    _validate(spec, str(path), origins)
    return spec


def spec_from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), where: str = "stored spec"
) -> StudySpec:
    """Rebuild a spec from :func:`spec_to_dict` data, then apply ``--set`` overrides."""
    raw = json.loads(json.dumps(data))  # a deep copy
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, f"--set {key}")
    spec = _build(StudySpec, raw, where=where, prefix="")
    _validate(spec, where)
    return spec


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"{where}: {part!r} is a value, not a section; check the key")
        node = child
    node[parts[-1]] = value


def _build(
    cls: type, raw: Any, where: str, prefix: str, origins: dict[str, str] | None = None
) -> Any:
    origins = origins or {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{origins.get(prefix.rstrip('.'), where)}: [{prefix.rstrip('.')}] must be a table "
            f"of keys; set its keys one by one, like --set {prefix}KEY=VALUE"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "spec_file"}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = prefix + key
        here = origins.get(dotted, where)
        if key not in fields:
            allowed = ", ".join(prefix + f for f in sorted(fields))
            below = (o for k, o in origins.items() if k.startswith(dotted + "."))
            here = origins.get(dotted) or next(below, where)  # a --set of a key inside it
            raise SpecError(f"{here}: unknown key {dotted!r}; allowed keys here: {allowed}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, here, dotted + ".", origins)
        else:
            example = f"{dotted}={_toml(getattr(defaults, key))}"
            kwargs[key] = _convert(hints[key], value, here, dotted, example)
    return cls(**kwargs)


def _toml(value: Any) -> str:
    """A value as it is written after ``--set KEY=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value) if value != "" else '""'


def _convert(hint: Any, value: Any, where: str, key: str, example: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        item = args[0]
        if not isinstance(value, list) or (args[-1] is not Ellipsis and len(value) != len(args)):
            shape = "a list of numbers" if args[-1] is Ellipsis else f"a list of {len(args)}"
            raise SpecError(
                f"{where}: {key} must be {shape}, got {value!r}; write it like {example}"
            )
        return tuple(_convert(item, v, where, key, example) for v in value)
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional keys yet
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise SpecError(
            f"{where}: {key} must be {kind[hint]}, got {value!r}; write it like {example}"
        )
    return float(value) if hint is float else value


def _validate(spec: StudySpec, where: str, origins: dict[str, str] | None = None) -> None:
    """Checks across keys; an error names the --set option that gave the key its value."""
    lr, pruner, size = spec.search.learning_rate, spec.pruner, list(spec.data.image_size)
    hb, grace = spec.storage.heartbeat_interval, spec.storage.grace_period
    counts = {
        "train.epochs": spec.train.epochs,
        "search.n_trials": spec.search.n_trials,
        "data.batch_size": spec.data.batch_size,
    }
    checks: list[tuple[bool, str]] = [
        (
            lr.low < lr.high,
            f"search.learning_rate.low ({lr.low:g}) must be below .high ({lr.high:g}); "
            "lower search.learning_rate.low or raise search.learning_rate.high",
        ),
        (
            not lr.log or lr.low > 0,
            f"search.learning_rate.low must be > 0 with log = true, got {lr.low:g}; use a "
            "positive low such as 1e-4, or set search.learning_rate.log=false",
        ),
        *((v >= 1, f"{k} must be at least 1, got {v}") for k, v in counts.items()),
        (min(size) >= 32, f"data.image_size must be at least [32, 32], got {size}"),
        (
            spec.model.recipe != "xception-head" or min(size) >= 71,
            f"data.image_size must be at least [71, 71] for xception-head, got {size}",
        ),
        (
            pruner.kind in PRUNER_KINDS,
            f"pruner.kind {pruner.kind!r} is not one of: {', '.join(PRUNER_KINDS)}",
        ),
        (
            spec.model.recipe in RECIPES,
            f"model.recipe {spec.model.recipe!r} is not one of: {', '.join(RECIPES)}",
        ),
        (
            0 < pruner.percentile < 100,
            f"pruner.percentile must be in (0, 100), got {pruner.percentile:g}",
        ),
        *(
            (v >= 0, f"pruner.{k} must be at least 0, got {v:g}")
            for k, v in {
                "n_startup_trials": pruner.n_startup_trials,
                "n_warmup_steps": pruner.n_warmup_steps,
                "patience": pruner.patience,
            }.items()
        ),
        (
            pruner.min_resource >= 1,
            f"pruner.min_resource must be at least 1, got {pruner.min_resource}",
        ),
        (
            pruner.reduction_factor >= 2,
            f"pruner.reduction_factor must be at least 2, got {pruner.reduction_factor}",
        ),
        (spec.model.download_timeout > 0, "model.download_timeout must be > 0 seconds"),
        (hb >= 1, f"storage.heartbeat_interval must be >= 1 second, got {hb}"),
        (grace > hb, f"storage.grace_period ({grace}) must exceed .heartbeat_interval ({hb})"),
        (
            spec.storage.outage_tolerance >= 0,
            f"storage.outage_tolerance must be at least 0 seconds, "
            f"got {spec.storage.outage_tolerance:g}",
        ),
        (spec.data.dir != "", "data.dir is empty; set it to the dataset folder"),
    ]
    for ok, message in checks:
        if not ok:
            fix = "" if "; " in message else "; fix it in the spec file or with --set"
            source = (origins or {}).get(message.split(" ", 1)[0], where)
            raise SpecError(f"{source}: {message}{fix}")
    outside = [r for r in spec.search.warm_start if not lr.low <= r <= lr.high]
    if outside:
        raise SpecError(
            f"{where}: search.warm_start rates {outside} lie outside search.learning_rate "
            f"[{lr.low}, {lr.high}]; widen the range or drop them"
        )


def worker_command(spec: StudySpec) -> str:
    """The ``tuner worker`` command that runs this spec's study, for advice in errors."""
    path = Path(spec.spec_file) if spec.spec_file else None
    if path is None:
        study = spec.study.name
    elif path.parent.resolve() in {d.resolve() for d in _studies_dirs()}:
        study = path.stem  # found by name
    else:
        study = str(path)
    command = f"tuner worker --study {study}"
    if path is None or spec.study.name != path.stem:
        command += f" --set study.name={spec.study.name}"
    return command


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """The spec as plain data (lists, not tuples), for JSON and notes."""
    data = dataclasses.asdict(spec)
    data.pop("spec_file", None)

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(data)
