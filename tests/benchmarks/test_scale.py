"""benchmarks/scale.py --small: every section runs and prints sane figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts worker processes and tuner commands

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"
NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def output() -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _backends(output: str) -> list[str]:
    line = next(x for x in output.splitlines() if x.startswith("backends: "))
    return line.removeprefix("backends: ").split(", ")


def test_size_section_times_real_trials_at_each_size(output: str) -> None:
    for backend in _backends(output):
        rows = re.findall(
            rf"^{backend} +\| +(\d+) \| +{NUMBER} \| +{NUMBER} \| +{NUMBER} \| +{NUMBER} "
            r"\| (\d+)$",
            output,
            re.M,
        )
        assert [int(r[0]) for r in rows] == [50, 300], output
        for _, wall, storage, sql, cpu, code in rows:
            assert code == "0"
            assert 0 < float(sql) <= float(wall) and 0 < float(storage) <= float(wall)
            assert 0 < float(cpu) < 10_000
        grew = re.search(rf"^{backend} +\| largest/smallest: storage {NUMBER}x", output, re.M)
        assert grew and float(grew[1]) > 0, output


def test_workers_section_keeps_the_budget_exact(output: str) -> None:
    if "postgresql" not in _backends(output):
        pytest.skip("no PostgreSQL server at 127.0.0.1:5432")
    rows = re.findall(r"^ +(\d+) \| +8 \| +exact \| \{0: (\d+)\} \| +" + NUMBER, output, re.M)
    assert [(int(w), int(n)) for w, n, _ in rows] == [(1, 1), (4, 4)], output


def test_overhead_section_says_what_is_measured_and_what_extrapolated(output: str) -> None:
    assert "(Ray Tune: 14 % at 10,000 trials)" in output
    for backend in _backends(output):
        one = re.search(rf"^{backend}: measured, 1 worker: .*: {NUMBER} % of a 0.25 s", output,
                        re.M)  # fmt: skip
        crowd = re.search(
            rf"^{backend}: measured, 2 workers .*, {NUMBER} % overhead, .*budget exact", output,
            re.M,
        )  # fmt: skip
        assert one and crowd, output
        assert 0 < float(one[1]) < 100 and 0 <= float(crowd[1]) < 100
        assert re.search(rf"^{backend}: extrapolated, 200 workers .*not measured", output, re.M)


def test_reads_section_times_status_export_and_the_dashboard(output: str) -> None:
    for backend in _backends(output):
        rows = re.findall(
            rf"^{backend} +\| +(\d+) \| +{NUMBER} \| +{NUMBER} \| +{NUMBER} \| +{NUMBER} "
            rf"\| +{NUMBER} \| +{NUMBER} \| exit 0 0, HTTP 200$",
            output,
            re.M,
        )
        assert [int(r[0]) for r in rows] == [10, 300], output
        assert all(0 <= float(x) < 120 for row in rows for x in row[1:])
