"""benchmarks/learnedbase.py: the heads of the bfloat16 study never see the base's images."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learnedbase.py"


def _module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("learnedbase", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path, split: str) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (root / split).glob("*/*.jpg")}


def test_layout_keeps_the_heads_images_apart_from_the_base(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split, n in (("train", 12), ("validation", 3)):
        for cls in ("a", "b"):
            for i in range(n if cls == "a" else n // 2):
                (data / split / cls).mkdir(parents=True, exist_ok=True)
                (data / split / cls / f"{i:02d}.jpg").write_bytes(b"x")
    base, heads = _module().layout(data, tmp_path / "out", per_class=4, heads=6)
    assert len(_files(base, "train")) == 8  # 4 of each class
    assert not _files(base, "train") & _files(heads, "train")
    # 8 + 2 images left: about 6 of them, as many of each class as the split has
    assert {len(list((heads / "train" / c).glob("*.jpg"))) for c in "ab"} == {5, 1}
    assert _files(base, "validation") == _files(heads, "validation") == _files(data, "validation")
