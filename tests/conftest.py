"""Shared pytest setup: repo root on sys.path and the tiny random model every suite can use."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _load_tiny_model_script():
    """Import scripts/make_tiny_model.py as a module (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "make_tiny_model.py"
    spec = importlib.util.spec_from_file_location("make_tiny_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT_DIR of scripts/make_tiny_model.py: `hf/` (Hugging Face layout) and `comfy/` (three files + tokenizer/)."""
    out_dir = tmp_path_factory.mktemp("tiny-model")
    _load_tiny_model_script().build_tiny_model(out_dir)
    return out_dir
