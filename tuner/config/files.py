"""Where study specs live: ``--study NAME`` or a path, and the command that runs a study."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import SpecError

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec

__all__ = ["available_studies", "find_spec_file", "studies_dirs", "worker_command"]


def studies_dirs() -> list[Path]:
    """The folders searched for ``NAME.toml``, first match wins."""
    dirs = [Path.cwd() / "studies"]
    if env := os.environ.get("TUNER_STUDIES_DIR"):
        dirs.insert(0, Path(env))
    package = Path(__file__).resolve().parents[1]  # tuner/, where a wheel keeps _studies/
    packaged = package / "_studies"
    repo = package.parent / "studies"
    dirs += [d for d in (packaged, repo) if d not in dirs]
    return dirs


def available_studies() -> list[str]:
    """Names of the study specs that ``--study NAME`` can find."""
    names = {p.stem for d in studies_dirs() if d.is_dir() for p in d.glob("*.toml")}
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
    for d in studies_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(available_studies()) or "none"
    raise SpecError(
        f"unknown study {name_or_path!r}; available studies: {known} "
        "(or pass a path to a .toml spec file)"
    )


def worker_command(spec: StudySpec) -> str:
    """The ``tuner worker`` command that runs this spec's study, for advice in errors."""
    path = Path(spec.spec_file) if spec.spec_file else None
    if path is None:
        study = spec.study.name
    elif path.parent.resolve() in {d.resolve() for d in studies_dirs()}:
        study = path.stem  # found by name
    else:
        study = str(path)
    command = f"tuner worker --study {study}"
    if path is None or spec.study.name != path.stem:
        command += f" --set study.name={spec.study.name}"
    return command
