"""Workers' phases in the study: published, read by ``tuner status``, marked on exit."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.conftest import Env
from tuner.results.status import render_status, summarize
from tuner.study.phases import EXITED, PHASE_PREFIX, PhaseBoard, phase_attrs, read_phases

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def _attr(phase: str, seconds_ago: float, progress: str = "") -> dict[str, str]:
    return {"phase": phase, "progress": progress,
            "time": (T0 - dt.timedelta(seconds=seconds_ago)).isoformat()}  # fmt: skip


def test_board_writes_once_the_study_exists_and_marks_its_exit() -> None:
    storage = optuna.storages.InMemoryStorage()
    board = PhaseBoard(storage, "s", "host:1", clock=lambda: T0)
    board.set("checking data")
    assert not board.write()  # no study yet: nothing to write to, and no error
    study = optuna.create_study(study_name="s", storage=storage)
    board.set("computing features", lambda: "train 10/20")
    assert board.write()
    assert phase_attrs(study)[PHASE_PREFIX + "host:1"] == {
        "phase": "computing features", "progress": "train 10/20", "time": T0.isoformat()
    }  # fmt: skip
    board.close("done")
    assert phase_attrs(study)[PHASE_PREFIX + "host:1"]["phase"] == EXITED


class _CountingStorage(optuna.storages.InMemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def set_study_system_attr(self, study_id: int, key: str, value: object) -> None:
        self.writes += 1
        super().set_study_system_attr(study_id, key, value)


def test_board_writes_at_most_once_per_gap_however_often_the_phase_changes() -> None:
    storage = _CountingStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    with PhaseBoard(storage, "s", "host:4", every=3600, min_gap=0.5):
        pass  # the first write, then the exit
    base = storage.writes
    with PhaseBoard(storage, "s", "host:4", every=3600, min_gap=0.5) as board:
        start = time.monotonic()
        for trial in range(60):  # a fast trial every 20 ms for 1.2 s
            board.set(f"training trial {trial}")
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        time.sleep(0.7)  # the last change is written at the end of its gap
        assert phase_attrs(study)[PHASE_PREFIX + "host:4"]["phase"] == "training trial 59"
    writes = storage.writes - base
    assert 2 <= writes <= 2 + elapsed / 0.5 + 1, writes  # not one per change


def test_board_thread_writes_a_new_phase_within_its_gap() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    with PhaseBoard(storage, "s", "host:2", every=3600) as board:
        board.set("training trial 3", "epoch 2/10")
        for _ in range(200):
            shown = phase_attrs(study).get(PHASE_PREFIX + "host:2", {})
            if shown.get("phase") == "training trial 3":
                break
            time.sleep(0.01)
        assert shown == {**shown, "phase": "training trial 3", "progress": "epoch 2/10"}
    assert phase_attrs(study)[PHASE_PREFIX + "host:2"]["phase"] == EXITED


def test_read_phases_tells_live_silent_exited_and_forgotten_workers() -> None:
    attrs = {
        PHASE_PREFIX + "b:2": _attr("computing features", 5, "train 3/9"),
        PHASE_PREFIX + "a:1": _attr("training trial 1", 300),  # silent for 5 minutes
        PHASE_PREFIX + "c:3": _attr(EXITED, 10, "done"),
        PHASE_PREFIX + "d:4": _attr("waiting", 7200),  # long gone
        PHASE_PREFIX + "e:5": "not a record",
        "tuner:spec": "{}",
    }
    phases = read_phases(attrs, T0)
    assert [(p.worker, p.alive(T0)) for p in phases] == [
        ("b:2", True), ("a:1", False), ("c:3", False)
    ]  # fmt: skip


def _study_with_workers(phases: dict[str, dict[str, str]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for key, value in phases.items():
        study.set_user_attr(PHASE_PREFIX + key, value)
    study.enqueue_trial({"learning_rate": 1e-3})
    return study


def _now_attr(phase: str, progress: str = "") -> dict[str, str]:
    return {"phase": phase, "progress": progress,
            "time": dt.datetime.now(dt.timezone.utc).isoformat()}  # fmt: skip


def test_status_shows_the_workers_and_never_says_none_is_alive_while_one_is() -> None:
    from rich.console import Console

    study = _study_with_workers({"h:7": _now_attr("computing features", "train 1200/3068")})
    summary = summarize(study)
    console = Console(width=200, record=True)
    console.print(*render_status(summary))
    text = console.export_text()
    assert "Workers" in text and "h:7" in text and "train 1200/3068" in text
    assert "No running trials; 1 worker at work (h:7 computing features)." in text
    assert "no worker alive" not in text


def test_status_without_a_live_worker_says_so() -> None:
    from rich.console import Console

    study = _study_with_workers({"h:8": _now_attr(EXITED, "done")})
    console = Console(width=200, record=True)
    console.print(*render_status(summarize(study)))
    assert "No running trials, and no worker alive." in console.export_text()


def test_status_cli_while_features_are_computed_says_to_wait(tmp_path: Path, cli: object) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="clothing", storage=url, direction="maximize")
    study.set_user_attr(PHASE_PREFIX + "h:9", _now_attr("computing features", "train 5/10"))
    study.enqueue_trial({"learning_rate": 1e-3})
    code, out, err = cli("status", "--storage", url)  # type: ignore[operator]
    assert code == 0, err  # a study being started is no error
    assert "h:9" in out and "computing features" in out
    assert out.count("No complete trial yet; 1 worker at work (h:9 computing features)") == 1
    assert err == ""


def test_a_worker_of_a_full_study_says_so_before_loading_tensorflow(
    env: Env, cli: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.config.build import open_study
    from tuner.config.spec import load_spec
    from tuner.storages.storage import open_storage

    spec = load_spec("clothing", [a.removeprefix("--set=") for a in env.overrides()])
    study = open_study(spec, open_storage(env.url, spec.storage))
    study.add_trial(create_trial(
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)},
        value=0.5, state=TrialState.COMPLETE,
    ))  # fmt: skip
    monkeypatch.setitem(sys.modules, "tuner.training.objective", None)  # importing it fails
    code, _, err = cli("worker", "--storage", env.url, "--n-trials", "1", *env.overrides())  # type: ignore[operator]
    assert code == 0, err
    assert "already holds 1 of 1 finished trials; nothing to do" in err
    shown = phase_attrs(optuna.load_study(study_name="clothing", storage=env.url))
    [phase] = [v for k, v in shown.items() if k.startswith(PHASE_PREFIX)]
    assert phase["phase"] == EXITED


def test_the_note_says_when_features_are_computed() -> None:
    from tuner.config.note import study_note
    from tuner.config.spec import load_spec

    spec = load_spec("clothing")
    plain = study_note(spec)
    assert plain.startswith("# clothing\n\nTunes `learning_rate`")
    busy = study_note(spec, now="worker h:1 is computing the frozen-base features")
    assert busy.startswith("# clothing\n\n> **Now:** worker h:1 is computing the frozen-base")
    assert busy.endswith(plain.split("\n\n", 1)[1])


def test_features_progress_publishes_the_count_and_notes_it_while_it_runs() -> None:
    from optuna_dashboard._note import get_note_from_system_attrs

    from tuner.config.build import note_for
    from tuner.config.spec import load_spec
    from tuner.study.phases import features_progress

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="clothing", storage=storage)
    board = PhaseBoard(storage, "clothing", "h:3", clock=lambda: T0)

    def note() -> str:
        attrs = storage.get_study_system_attrs(study._study_id)
        return str(get_note_from_system_attrs(attrs, None)["body"])

    with features_progress(
        study, note_for(load_spec("clothing")), board, lambda: None
    ) as progress:
        progress("train", 5, 10)
        assert "> **Now:** worker" in note() and "computing the frozen-base features" in note()
        board.write()
        shown = phase_attrs(study)[PHASE_PREFIX + "h:3"]
        assert (shown["phase"], shown["progress"]) == ("computing features", "train 5/10")
    assert "**Now:**" not in note()
