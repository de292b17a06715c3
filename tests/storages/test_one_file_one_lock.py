"""One SQLite file reached through two names shares one budget lock and one artifact folder."""

from __future__ import annotations

from pathlib import Path

import optuna

from tuner.storages.storage import artifact_folder, budget_lock


def test_every_name_of_a_database_file_shares_its_lock_and_artifacts(tmp_path: Path) -> None:
    real = tmp_path / "study.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{real}")
    (tmp_path / "other").mkdir()
    alias = tmp_path / "other" / "alias.db"
    alias.symlink_to(real)
    urls = [f"sqlite:///{real}", f"sqlite:///{alias}", f"sqlite:///{tmp_path}/other/../study.db"]
    folders = {artifact_folder(url, "s") for url in urls}
    assert folders == {tmp_path / "study-artifacts"}
    storage = optuna.storages.RDBStorage(urls[0])
    locks = {budget_lock(storage, url, "s")._file_lock.lock_file for url in urls}  # type: ignore[union-attr]
    assert locks == {f"{real}.budget.lock"}
