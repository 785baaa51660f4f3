"""Fixtures of the app suite: the live server on the tiny real engine, shared by the acceptance tests."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.engine_loader import engine_factory  # noqa: E402
from app_helpers import STEP_DELAY, make_settings  # noqa: E402

if TYPE_CHECKING:
    from live_server import LiveServer


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The real app on the tiny model, shared by the acceptance tests (queue size 6, slowed steps)."""
    from live_server import start_server  # gradio loads with the first test that needs the server

    tmp = tmp_path_factory.mktemp("app-tiny")
    settings = make_settings(tmp, weights_dir=tiny_model_dir / "comfy", debug_step_delay=STEP_DELAY)
    live = start_server(settings, engine_factory(settings))
    try:
        live.wait_ready()
        assert live.service.ready, live.service.unavailable_error
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="session")
def direct_engine(tiny_server: LiveServer):
    """A second engine, built from the server's settings as the server built its own (without the debug step
    delay, which changes no pixel): the reference the served images are compared with."""
    return engine_factory(dataclasses.replace(tiny_server.service.settings, debug_step_delay=0.0))()


@pytest.fixture(scope="session")
def tiny_loras(tiny_server: LiveServer, direct_engine) -> dict[str, Path]:
    """Two LoRAs for the tiny model in the server's LoRA folder: `ink` (PEFT names, every Linear) and
    `glow` (ComfyUI names with fused qkv, attention layers only)."""
    from tests.model.lora_writers import comfy_format, linear_shapes, peft_format, random_lora, write  # torch

    folder = tiny_server.service.settings.lora_dir
    shapes = linear_shapes(direct_engine.transformer)
    tensors, metadata = peft_format(random_lora(shapes, 4, seed=31), alpha=4.0)
    glow = comfy_format(random_lora(shapes, 4, seed=32, targets="attention"), alpha=8.0)
    return {"ink": write(folder / "ink.safetensors", tensors, metadata),
            "glow": write(folder / "glow.safetensors", glow)}
