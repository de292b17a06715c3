"""``model.precision``: auto resolution, the cache key, bfloat16 features near float32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import Env
from tuner.assets.datasets import load_split, scan_dataset
from tuner.config.build import trial_setup
from tuner.config.spec import load_spec
from tuner.errors import SpecError
from tuner.training import features, precision
from tuner.training.precision import extraction_precision, resolve_precision

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_tile amx_int8 amx_bf16\n"
OLD_CPU = "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw\n"


@pytest.mark.parametrize(
    ("cpuinfo", "gpus", "expected", "why"),
    [
        (ZEN4, [], "bfloat16", "avx512_bf16"),
        (SAPPHIRE_RAPIDS, [], "bfloat16", "amx_bf16"),
        (OLD_CPU, [], "float32", "neither avx512_bf16 nor amx_bf16"),
        ("", [], "float32", "neither"),  # no /proc/cpuinfo: float32
        (OLD_CPU, [(8, 0)], "bfloat16", "compute capability 8.0"),
        (ZEN4, [(7, 5)], "float32", "7.5, below 8.0"),  # the GPU computes, not the CPU
    ],
)
def test_auto_resolves_from_the_device(
    cpuinfo: str, gpus: list[tuple[int, int]], expected: str, why: str
) -> None:
    resolved, reason = resolve_precision("auto", cpuinfo=cpuinfo, gpus=gpus)
    assert resolved == expected
    assert why in reason and reason.startswith("model.precision = auto")


def test_a_set_precision_is_kept_and_a_training_base_is_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_precision("bfloat16", cpuinfo=OLD_CPU, gpus=[])[0] == "bfloat16"
    assert resolve_precision("float32", cpuinfo=ZEN4, gpus=[])[0] == "float32"
    monkeypatch.setattr(precision, "_native", lambda *_: (True, "faked"))
    spec = load_spec("clothing-head", ["model.precision=auto"])
    assert extraction_precision(spec.model) == "bfloat16"
    trains = dataclasses.replace(spec.model, trainable_base=True)
    assert extraction_precision(trains) == "float32"


def test_the_cache_key_names_the_precision(env: Env) -> None:
    def key(value: str) -> str:
        sets = [s.removeprefix("--set=") for s in env.overrides(**{"model.precision": value})]
        spec = load_spec("clothing", sets)
        return features.cache_key(trial_setup(spec))

    assert key("float32") != key("bfloat16")
    assert key("auto") == key(extraction_precision(load_spec("clothing").model))


def test_a_bad_precision_names_the_key_and_the_values() -> None:
    with pytest.raises(SpecError, match=r"model.precision 'half' is not one of: auto, float32"):
        load_spec("clothing", ["model.precision=half"])


@pytest.mark.slow
def test_bfloat16_features_are_close_to_float32(env: Env) -> None:
    """The same seeded random base, both ways, on the tiny images: a few % apart (L2)."""
    from tuner.training.model import build_feature_extractor

    spec = load_spec("clothing", [s.removeprefix("--set=") for s in env.overrides()])
    setup = trial_setup(spec)
    images = np.concatenate(
        [x for x, _ in load_split(scan_dataset(env.data), "validation", (71, 71), 8)]
    )
    exact = build_feature_extractor(setup, "float32").predict(images, verbose=0)
    half = build_feature_extractor(setup, "bfloat16").predict(images, verbose=0)
    assert half.dtype == np.float32 and half.shape == exact.shape
    error = np.linalg.norm(half - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.median(error) < 0.03, error
    assert np.median(error) > 1e-5  # it did compute in bfloat16


def test_the_device_line_names_the_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.training.devices import device_line

    assert device_line("float32").endswith(
        "a frozen base extracts in float32 (model.precision = float32)"
    )
    monkeypatch.setattr(precision, "_native", lambda *_: (False, "the CPU has neither"))
    assert "extracts in float32 (model.precision = auto: the CPU has neither" in device_line(
        "auto"
    )
    assert "extracts in" not in device_line()
