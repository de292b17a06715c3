"""Dataset validation and the HTTP download, against a local server (no TensorFlow)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.conftest import Cli, serve_archive
from tuner.assets.datasets import download_dataset, scan_dataset
from tuner.errors import DataError


def test_download_unpacks_the_archive(tmp_path: Path, tiny_data: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    with serve_archive(tmp_path, tiny_data) as url:
        dest = download_dataset(
            "clothing", tmp_path / "out", url=url, progress=lambda d, t: seen.append((d, t))
        )
    scan = scan_dataset(dest)
    assert scan.class_names == scan_dataset(tiny_data).class_names
    assert scan.count("train") == scan_dataset(tiny_data).count("train")
    assert seen and seen[-1][0] == seen[-1][1]  # the progress bar reached its total


def test_cli_download_command(tmp_path: Path, tiny_data: Path, cli: Cli) -> None:
    with serve_archive(tmp_path, tiny_data) as url:
        code, _out, err = cli("data", "download", "clothing", "--dest", str(tmp_path / "d"),
                              "--url", url)  # fmt: skip
    assert code == 0, err
    assert "10 classes" in err


def test_offline_download_fails_with_what_to_do(tmp_path: Path, cli: Cli) -> None:
    dest = tmp_path / "nowhere"
    url = "http://127.0.0.1:9/clothing.zip"  # the discard port: nothing listens
    code, _out, err = cli("data", "download", "clothing", "--dest", str(dest), "--url", url)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(dest) in err and url in err and "--url URL" in err
    assert "--set" not in err  # an option that `tuner data download` does not take
    assert not dest.exists()


def test_download_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        download_dataset("clothing", tmp_path / "full", url="http://127.0.0.1:9/x.zip")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_download_to_a_place_that_cannot_hold_a_folder(tmp_path: Path, cli: Cli) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    cases = {a_file: "is a file", a_file / "x": f"{a_file} is a file"}
    if Path("/proc/self").is_dir():
        cases[Path("/proc/tuner-data")] = "cannot create"
    for dest, needle in cases.items():
        code, _out, err = cli("data", "download", "clothing", "--dest", str(dest))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert str(dest) in err and needle in err and "--dest" in err
    assert a_file.read_text() == "keep me"


def test_not_a_zip_is_reported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "clothing.zip").write_text("<html>not found</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clothing.zip"
        with pytest.raises(DataError, match="did not return a zip archive"):
            download_dataset("clothing", tmp_path / "out", url=url)
    finally:
        server.shutdown()


def test_scan_checks_splits_classes_and_images(tmp_path: Path, tiny_data: Path) -> None:
    scan = scan_dataset(tiny_data)
    assert len(scan.class_names) == 10
    assert scan.count("validation") == 20
    assert len(scan.fingerprint()) == 64


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    from tests.conftest import make_subset

    data = make_subset(tmp_path / "d", {"train": 1, "validation": 1}, classes=2)
    before = scan_dataset(data).fingerprint()
    image = next((data / "train").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # still a valid JPEG, other bytes
    assert scan_dataset(data).fingerprint() != before


def test_pool_children_skip_decoding_only_the_folder_their_parent_checked(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from tuner.config.spec import load_spec
    from tuner.runner.startup import CHECKED_DATA_ENV, ensure_dataset

    data = shutil.copytree(tiny_data, tmp_path / "data")
    first = sorted(p for p in (data / "train").iterdir())[0]
    (first / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    spec = load_spec("clothing", [f"data.dir={data}"])
    with pytest.raises(DataError, match=r"broken\.jpg"):
        ensure_dataset(spec)  # decoded: the bad file is found
    monkeypatch.setenv(CHECKED_DATA_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"broken\.jpg"):
        ensure_dataset(spec)  # another folder was checked: this one is decoded
    monkeypatch.setenv(CHECKED_DATA_ENV, str(data.resolve()))
    scan = ensure_dataset(spec)  # the parent checked this very folder: not decoded again
    assert first / "broken.jpg" in scan.files["train"]
