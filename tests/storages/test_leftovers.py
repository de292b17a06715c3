"""A failed first run leaves nothing behind: no empty study file, no lock, no empty folder."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from tuner.storages.leftovers import removed_on_failure, storage_files


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_first_run_that_fails_on_its_data_removes_its_storage(
    kind: str, tmp_path: Path, cli: object
) -> None:
    url = f"sqlite:///{tmp_path / 'clothing.db'}" if kind == "sqlite" else (
        f"journal://{tmp_path / 'clothing.log'}"
    )  # fmt: skip
    sets = ["--set", f"data.dir={tmp_path / 'no-data'}", "--set", "model.weights=none"]
    code, _, err = cli("worker", "--storage", url, *sets)  # type: ignore[operator]
    assert code == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_no_lock_and_no_folder(tmp_path: Path, cli: object) -> None:
    spec = tmp_path / "clothing.toml"
    folder = tmp_path / "data" / "sets" / "clothing"
    text = (REPO / "studies" / "clothing.toml").read_text()
    spec.write_text(text.replace('"data/clothing-dataset-small"', f'"{folder}"'))
    mirror = f"http://127.0.0.1:{_closed_port()}/clothing.zip"
    url = f"sqlite:///{tmp_path / 'clothing.db'}"
    sets = ["--set", f"data.url={mirror}", "--set", "model.weights=none"]
    code, _, err = cli("worker", "--study", str(spec), "--storage", url, *sets)  # type: ignore[operator]
    assert code == 2 and "cannot download" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clothing.toml"]


def test_files_that_existed_or_hold_a_study_are_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(RuntimeError), removed_on_failure(url):
        optuna.create_study(study_name="kept", storage=url)
        raise RuntimeError("after the study was created")
    assert (tmp_path / "s.db").is_file()
    other = tmp_path / "o.db"
    other.write_bytes(b"")
    with pytest.raises(RuntimeError), removed_on_failure(f"sqlite:///{other}"):
        raise RuntimeError("before anything")
    assert other.is_file()


def test_server_storages_have_no_files() -> None:
    assert storage_files("postgresql://u@h/db") == []
    assert [p.name for p in storage_files("sqlite:///x/c.db")][:2] == ["c.db", "c.db-wal"]
