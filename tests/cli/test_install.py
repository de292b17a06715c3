"""TensorFlow comes from exactly one extra: ``cpu`` or ``gpu``.

pip cannot drop a base dependency for an extra, so TensorFlow is in neither
the base install nor both extras: the resolver's plan for each extra holds one
TensorFlow distribution (``pip install --dry-run --report``, which needs the
package index: marked ``install``, run by CI). Without either extra a worker
says which one to install, before anything is created.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Every distribution that installs the ``tensorflow`` package.
TENSORFLOWS = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"}


def _plan(extra: str, report: Path) -> list[tuple[str, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), f"{REPO}[{extra}]"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        if any(
            w in done.stderr for w in ("No matching distribution", "Could not fetch", "connection")
        ):
            pytest.skip(f"the package index cannot be reached: {done.stderr.strip()[-300:]}")
        raise AssertionError(f"pip's resolver failed for .[{extra}]:\n{done.stderr}")
    planned = json.loads(report.read_text())["install"]
    return [
        (p["metadata"]["name"].lower().replace("_", "-"), p["metadata"]["version"])
        for p in planned
    ]


@pytest.mark.install
@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_each_extra_resolves_to_exactly_one_tensorflow(extra: str, tmp_path: Path) -> None:
    plan = _plan(extra, tmp_path / "report.json")
    names = {name for name, _ in plan}
    tensorflows = sorted(names & TENSORFLOWS)
    assert len(tensorflows) == 1, f".[{extra}] installs {tensorflows}: {sorted(names)}"
    cuda = sorted(n for n in names if n.startswith("nvidia-"))
    if extra == "gpu":
        assert tensorflows == ["tensorflow"], tensorflows
        assert "nvidia-cudnn-cu12" in names, f"the GPU plan has no cuDNN: {cuda}"
    else:
        x86 = platform.machine() in ("x86_64", "AMD64")
        assert tensorflows == (["tensorflow-cpu"] if x86 else ["tensorflow"]), tensorflows
        assert not cuda, f"the CPU plan pulls CUDA libraries: {cuda}"


def test_a_worker_without_tensorflow_names_the_extra_to_install(tmp_path: Path) -> None:
    # sys.modules["tensorflow"] = None: what an environment without TensorFlow looks like to
    # importlib (find_spec answers None, import raises ModuleNotFoundError).
    db, spec = tmp_path / "study.db", REPO / "studies" / "clothing-scratch.toml"
    program = (
        "import sys; sys.modules['tensorflow'] = None; "
        "from tuner.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "worker", "--study", str(spec),
         "--storage", f"sqlite:///{db}", "--set", f"data.dir={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: TensorFlow is not installed"), lines
    assert '".[cpu]"' in lines[0] and '".[gpu]"' in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a failed start left files behind"
