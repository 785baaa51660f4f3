"""Fixtures of the app suite: the live server on the tiny real engine, shared by the acceptance tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.engine_loader import engine_factory  # noqa: E402
from app_helpers import STEP_DELAY, make_settings  # noqa: E402
from live_server import LiveServer, start_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The real app on the tiny model, shared by the acceptance tests (queue size 6, slowed steps)."""
    tmp = tmp_path_factory.mktemp("app-tiny")
    settings = make_settings(tmp, weights_dir=tiny_model_dir / "comfy", debug_step_delay=STEP_DELAY)
    live = start_server(settings, engine_factory(settings))
    try:
        live.wait_ready()
        assert live.service.ready, live.service.unavailable_error
        yield live
    finally:
        live.stop()
