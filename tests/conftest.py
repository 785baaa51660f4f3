"""Shared pytest setup: repo root on sys.path and the tiny random model every suite can use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.tiny_model output folder: `hf/` (Hugging Face layout) and `comfy/` (three files + tokenizer/)."""
    from model.tiny_model import build_tiny_model  # torch loads here, not while collecting

    out_dir = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out_dir)
    return out_dir
