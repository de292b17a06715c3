"""Studies are found: a spec's relative storage file lies in TUNER_HOME, else in ./."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.config.build import storage_url
from tuner.config.spec import load_spec


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_HOME", raising=False)


def test_a_specs_relative_file_lies_in_tuner_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec("clothing")
    assert storage_url(spec) == "sqlite:///clothing.db"  # the current folder, as before
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    assert storage_url(spec) == f"sqlite:///{tmp_path / 'clothing.db'}"
    journal = load_spec("clothing", ["study.storage=journal://runs/c.log"])
    assert storage_url(journal) == f"journal://{tmp_path / 'runs' / 'c.log'}"
    # Absolute files, servers and URLs given by the user are taken as they are.
    for url in ("sqlite:////srv/c.db", "postgresql://u@h/db"):
        assert storage_url(load_spec("clothing", [f"study.storage={url}"])) == url
    assert storage_url(spec, "sqlite:///here.db") == "sqlite:///here.db"


def test_status_from_another_folder_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: object
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("status")  # type: ignore[operator]
    assert code == 2
    assert f"storage file {tmp_path / 'clothing.db'} does not exist" in err
    assert f"the current folder {tmp_path} (set TUNER_HOME" in err
    assert not (tmp_path / "clothing.db").exists()


def test_status_finds_the_study_through_tuner_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: object
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    study = optuna.create_study(
        study_name="clothing", storage=f"sqlite:///{home / 'clothing.db'}", direction="maximize"
    )
    study.enqueue_trial({"learning_rate": 1e-3})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNER_HOME", str(home))
    code, out, err = cli("status")  # type: ignore[operator]
    assert "Study clothing: trials by state" in out
    assert code == 2 and "no complete trial yet" in err
