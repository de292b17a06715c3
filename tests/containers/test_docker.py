"""The Dockerfile and compose.yaml agree with the package (no Docker engine needed).

What these cannot show: that the image builds and runs, that the containers
reach each other, and that the volumes' permissions suit the non-root user.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.conftest import REPO
from tuner.cli import app
from tuner.config.spec import load_spec
from tuner.results.dashboard import address_line

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SERVICES: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
TUNER_SERVICES = {k: v for k, v in SERVICES.items() if v.get("image", "").startswith("tuner")}


def _instructions() -> list[tuple[str, str]]:
    """The final stage's (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    final = lines[stages[-1] :]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in final]


def _one(name: str) -> str:
    found = [args for op, args in _instructions() if op == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {found}"
    return found[0]


def _env() -> dict[str, str]:
    pairs = " ".join(args for op, args in _instructions() if op == "ENV")
    return dict(item.split("=", 1) for item in shlex.split(pairs))


def _parse_cli(args: list[str]) -> Any:
    """Parse ``tuner ARGS`` with the real CLI, without running it; raises on a bad line."""
    command: Any = typer.main.get_command(app)
    ctx, name = None, "tuner"
    while True:
        ctx = command.make_context(name, list(args), parent=ctx)
        if not hasattr(command, "resolve_command"):  # a command, not a group
            return ctx
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown tuner command in {args}"
        command = sub


def _resolve(value: str) -> str:
    """A compose value with each ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _tuner_lines(service: dict[str, Any]) -> list[list[str]]:
    """Each tuner invocation of a service: its command, or the tuner calls in an sh -c."""
    command = service.get("command", [])
    if service.get("entrypoint") == ["sh", "-c"]:
        script = " ".join(command)
        return [shlex.split(part)[1:] for part in re.findall(r"tuner [^|&;]+", script)]
    return [command]


def test_base_image_is_a_slim_python_the_package_supports() -> None:
    image = _one("FROM")
    match = re.fullmatch(r"python:(3)\.(\d+)-slim(?:\S*)", image)
    assert match, image
    low = re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert low and int(match.group(2)) >= int(low.group(1))


def test_install_layers_hold_the_dependencies_then_this_package() -> None:
    runs = [args for op, args in _instructions() if op == "RUN" and "pip install" in args]
    # The dependencies first, so that their layer stays cached while only the code changes.
    deps, package = runs
    assert "-r /tmp/requirements.txt" in deps
    assert all("--no-cache-dir" in run for run in runs)
    assert re.search(r"--no-deps \S*/tuner-\*\.whl", package), package
    assert "pip check" in package
    built = [a for op, a in _all_instructions() if op == "RUN" and "pip wheel" in a]
    assert built and "--no-deps" in built[0], "the wheel of this package is built in the image"


def test_requirements_file_is_the_dependencies_with_the_installed_extras() -> None:
    pytest.importorskip("tomllib")  # the snippet runs on the image's Python 3.11
    (made,) = [
        a for op, a in _all_instructions() if op == "RUN" and a.endswith("> requirements.txt")
    ]
    python, flag, code = shlex.split(made)[:3]
    assert (python, flag) == ("python", "-c")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]  # TensorFlow for the CPU, both servers' drivers
    assert out.splitlines() == [
        *project["dependencies"],
        *extras["cpu"],
        *extras["postgres"],
        *extras["mysql"],
    ]


def _all_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_copied_sources_exist_and_pass_the_dockerignore() -> None:
    allowed = [
        ln[1:].rstrip("/")
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.startswith("!")
    ]
    sources = [
        src
        for op, args in _all_instructions()
        if op == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    assert {"pyproject.toml", "tuner", "studies"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), src
        assert src in allowed, f"{src} is copied but .dockerignore keeps it out"
    # hatchling reads the readme named in pyproject.toml while building the wheel.
    assert PYPROJECT["project"]["readme"] in sources


def test_entrypoint_is_the_console_script_and_runs_as_non_root() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert yaml.safe_load(_one("ENTRYPOINT")) == ["tuner"]
    assert scripts["tuner"] == "tuner.cli:main"
    user = _one("USER")
    assert user not in ("root", "0")
    runs = [args for op, args in _instructions() if op == "RUN"]
    assert any(re.search(rf"useradd\b.*\b{user}\b", run) for run in runs), "USER is created"
    _parse_cli(yaml.safe_load(_one("CMD")))


def test_volumes_hold_the_cache_and_the_spec_data_folder() -> None:
    volumes = set(yaml.safe_load(_one("VOLUME")))
    workdir = PurePosixPath(_one("WORKDIR"))
    cache = _env()["TUNER_CACHE_DIR"]
    assert cache in volumes
    assert _env()["KERAS_HOME"].startswith(cache + "/"), "downloaded weights persist"
    data_dir = PurePosixPath(load_spec("clothing").data.dir)
    assert not data_dir.is_absolute()
    assert str(workdir / data_dir.parts[0]) in volumes
    for name, service in TUNER_SERVICES.items():
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {cache, str(workdir / data_dir.parts[0])} <= mounts, name
        assert mounts <= volumes, f"{name} mounts a folder the image does not declare"


def test_compose_commands_are_valid_tuner_command_lines() -> None:
    assert {"worker", "dashboard"} <= set(TUNER_SERVICES)
    for service in TUNER_SERVICES.values():
        for args in _tuner_lines(service):
            ctx = _parse_cli(args)
            sets = ctx.params.get("set_") or []
            study = ctx.params.get("study")
            if study:
                load_spec(study, sets)  # the spec keys of every --set exist
    worker = SERVICES["worker"]
    assert worker["command"][0] == "worker"
    assert worker["deploy"]["replicas"] >= 2
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["data"]["condition"] == "service_completed_successfully"
    artifacts = {
        tuple(a for a in s["command"] if a.startswith("storage.artifacts="))
        for s in (SERVICES["worker"], SERVICES["dashboard"])
    }
    assert len(artifacts) == 1, "workers and dashboard must share one artifact store"


def test_compose_builds_with_the_host_network_and_stops_postgres_fast() -> None:
    for name, service in TUNER_SERVICES.items():
        # As `docker build --network host`, where the build reaches the index only that way.
        assert service["build"] == {"context": ".", "network": "host"}, name
    # The official image's STOPSIGNAL: a restart ends the sessions rather than awaiting them.
    assert SERVICES["postgres"]["stop_signal"] == "SIGINT"


def test_every_service_uses_postgres_through_the_psycopg2_extra() -> None:
    postgres = SERVICES["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = postgres["environment"]
    for name, service in TUNER_SERVICES.items():
        url = service["environment"]["TUNER_STORAGE"]
        assert url.startswith("postgresql+psycopg2://"), name
        assert f"@postgres:5432/{env['POSTGRES_DB']}" in url
        assert url.split("//")[1].startswith(f"{env['POSTGRES_USER']}:")
    drivers = PYPROJECT["project"]["optional-dependencies"]["postgres"]
    assert any(d.startswith("psycopg2") for d in drivers)


def test_dashboard_port_agrees_with_the_cli_and_stays_on_loopback() -> None:
    dashboard = SERVICES["dashboard"]
    ctx = _parse_cli(dashboard["command"])
    command = typer.main.get_command(app).commands["dashboard"]  # type: ignore[attr-defined]
    default = next(p for p in command.params if p.name == "port").default
    assert ctx.params["port"] == default == 8080
    assert ctx.params["host"] == "0.0.0.0"  # inside the container; published below
    (published,) = dashboard["ports"]
    assert _resolve(published) == f"127.0.0.1:{default}:{ctx.params['port']}"


@pytest.mark.slow
def test_the_wheel_ships_the_studies_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tuner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    studies = {p.name for p in (REPO / "studies").glob("*.toml")}
    assert {f"tuner/_studies/{s}" for s in studies} <= names
    assert "tuner/cli.py" in names
    assert re.search(r"^tuner = tuner\.cli:main$", entry_points, re.M)


# --- the dashboard's printed address, inside and outside a container ---------------------------


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"TUNER_IN_CONTAINER": "1", "TUNER_PUBLIC_URL": "http://127.0.0.1:9090/"},
            "open http://127.0.0.1:9090/dashboard/studies/3 (Ctrl-C to stop)",
        ),
        (
            {"TUNER_IN_CONTAINER": "1"},
            "listening on 0.0.0.0:8080 inside the container; open /dashboard/studies/3 on the "
            "address the host publishes port 8080 on (set TUNER_PUBLIC_URL to print it here)",
        ),
        ({}, f"open http://{socket.gethostname()}:8080/dashboard/studies/3 (Ctrl-C to stop)"),
    ],
)
def test_dashboard_address_is_one_a_user_can_open(environ: dict[str, str], line: str) -> None:
    # The container's host name, which `docker run` makes its id, is never shown inside one.
    assert address_line("0.0.0.0", "0.0.0.0", 8080, 3, environ) == line


def test_image_marks_itself_as_a_container_and_compose_publishes_the_address() -> None:
    assert _env()["TUNER_IN_CONTAINER"] == "1"
    dashboard = SERVICES["dashboard"]
    (published,) = dashboard["ports"]
    host, port, _inside = _resolve(published).rsplit(":", 2)
    assert _resolve(dashboard["environment"]["TUNER_PUBLIC_URL"]) == f"http://{host}:{port}"
