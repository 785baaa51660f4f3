"""Loading the engine from settings: both weight layouts, missing and broken weights explained."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from app.engine_loader import engine_factory
from model.loading.layout import HF_REQUIRED, find_layout
from app.errors import ServiceError
from app_helpers import make_settings


def test_both_layouts_are_recognised_and_load(tiny_model_dir: Path, tmp_path: Path):
    for layout in ("hf", "comfy"):
        folder = tiny_model_dir / layout
        assert find_layout(folder) is not None
        engine = engine_factory(make_settings(tmp_path, weights_dir=folder))()
        assert engine.describe()["layout"] == layout
    assert find_layout(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert find_layout(tmp_path / "empty") is None


def test_broken_weights_are_explained_with_what_was_found(tiny_model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir / "comfy", broken)
    (broken / "ae.safetensors").write_bytes(b"\0" * 64)  # truncated / corrupt VAE file
    with pytest.raises(ServiceError) as caught:
        engine_factory(make_settings(tmp_path, weights_dir=broken))()
    err = caught.value
    assert err.status == 503 and err.key == "weights_missing"
    assert "ae.safetensors" in err.message("en") and "scripts/download_weights.py" in err.message("en")


def test_missing_weights_banner_gives_a_command_that_works(tmp_path: Path):
    with pytest.raises(ServiceError) as caught:
        engine_factory(make_settings(tmp_path, weights_dir=tmp_path / "nothing-here"))()
    for lang in ("en", "zh"):
        message = caught.value.message(lang)
        # The system python lacks the packages: the venv's python (or the setup script) is what works.
        assert "`.venv/bin/python scripts/download_weights.py`" in message
        assert "`bash scripts/setup_and_start.sh`" in message
        assert "`python scripts/" not in message


def test_dtype_auto_loads_float32_on_the_cpu(tiny_model_dir: Path, tmp_path: Path):
    engine = engine_factory(make_settings(tmp_path, weights_dir=tiny_model_dir / "comfy", dtype="auto"))()
    assert engine.describe()["dtype"] == "float32"


def test_speed_settings_reach_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fuse_projections, compile_mode and fp8_matmul are passed to Engine.from_pretrained as the engine names them."""
    from model.engine import Engine

    seen = {}
    monkeypatch.setattr(Engine, "from_pretrained", classmethod(lambda cls, path, **kwargs: seen.update(kwargs)))
    for entry in HF_REQUIRED:  # an HF snapshot as find_layout recognises one (its files are never read here)
        (tmp_path / entry).write_text("{}") if entry.endswith(".json") else (tmp_path / entry).mkdir()
    settings = make_settings(tmp_path, weights_dir=tmp_path, device="cpu", fuse_projections=True,
                             compile_mode="max-autotune-no-cudagraphs", fp8_matmul="dynamic")
    engine_factory(settings)()
    assert (seen["fuse_projections"], seen["compile_mode"], seen["fp8_matmul"]) == (
        True, "max-autotune-no-cudagraphs", "dynamic")
    engine_factory(dataclasses.replace(settings, compile_mode="off"))()
    assert seen["compile_mode"] is None


def test_the_debug_step_delay_is_slept_once_a_step_before_the_step_is_reported(tiny_model_dir: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    """The knob lives with the engine (the in-process one, and the one in each Ray replica): one sleep per step,
    each before the caller hears of the step, so a Stop pressed during it stops the job before the next step."""
    import app.engine_loader as loader
    from model.request import GenerationRequest

    events = []
    monkeypatch.setattr(loader.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    engine = engine_factory(make_settings(tmp_path, weights_dir=tiny_model_dir / "comfy", debug_step_delay=0.25))()
    assert engine.describe()["layout"] == "comfy" and engine.limits.max_side  # the engine's own, through the wrapper
    engine.generate(GenerationRequest(prompt="a cat", width=128, height=128, steps=3, seed=1),
                    on_step=lambda progress: events.append(("step", progress.step)))
    assert events == [("sleep", 0.25), ("step", 1), ("sleep", 0.25), ("step", 2), ("sleep", 0.25), ("step", 3)]
    plain = engine_factory(make_settings(tmp_path, weights_dir=tiny_model_dir / "comfy"))()
    assert type(plain).__name__ == "Engine"  # no wrapper, no cost, when the knob is off
