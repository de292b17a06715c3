"""Progress on output that is not a terminal: plain lines, every few seconds or 10 %."""

from __future__ import annotations

import pytest

from tuner.common import console
from tuner.common.console import PlainProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress(every: float = 5.0) -> tuple[PlainProgress, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return PlainProgress("features: train", lines.append, every=every, clock=clock), lines, clock


def test_plain_progress_prints_every_tenth_and_the_end_once() -> None:
    progress, lines, _ = _progress(every=1e9)
    for done in range(0, 1001):
        progress.update(done, 1000)
    progress.update(1000, 1000)
    assert len(lines) == 11  # 0 %, 10 %, ..., 100 %, and the end only once
    assert lines[0] == "features: train 0/1000 (0%), 0 s"
    assert lines[-1].startswith("features: train 1000/1000 (100%)")


def test_plain_progress_prints_every_few_seconds_within_a_tenth() -> None:
    progress, lines, clock = _progress(every=5.0)
    progress.update(0, 10_000)
    for done in range(1, 500):  # under a tenth: only time makes a line
        clock.now = done * 0.1
        progress.update(done, 10_000)
    assert [line.split(" (")[0] for line in lines] == [
        "features: train 0/10000",
        "features: train 50/10000",
        "features: train 100/10000",
        "features: train 150/10000",
        "features: train 200/10000",
        "features: train 250/10000",
        "features: train 300/10000",
        "features: train 350/10000",
        "features: train 400/10000",
        "features: train 450/10000",
    ]


def test_plain_progress_without_a_total_prints_by_time() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = PlainProgress("downloading clothing:", lines.append, clock=clock, unit=str)
    progress.update(10, None)
    progress.update(20, None)
    clock.now = 6
    progress.update(30, None)
    assert lines == ["downloading clothing: 10, 0 s", "downloading clothing: 30, 6 s"]


def test_feature_bars_become_lines_when_stderr_is_a_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert not console.err_console.is_terminal  # pytest captures stderr
    with console.count_progress("frozen-base features:") as update:
        update("train", 1, 2)
        update("train", 2, 2)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "frozen-base features: train 1/2 (50%), 0 s",
        "frozen-base features: train 2/2 (100%), 0 s",
    ]


def test_download_bar_becomes_lines_in_megabytes(capsys: pytest.CaptureFixture[str]) -> None:
    with console.download_progress("clothing") as update:
        update(1_000_000, 2_000_000)
        update(2_000_000, 2_000_000)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "downloading clothing: 1.0 MB/2.0 MB (50%), 0 s",
        "downloading clothing: 2.0 MB/2.0 MB (100%), 0 s",
    ]
