"""Builds the engine from the settings, and tells "no weights here" apart from "weights are broken"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from app.errors import ServiceError
from app.redaction import public_path, redact
from app.settings import Settings

logger = logging.getLogger(__name__)

COMFY_FILES = ("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")
HF_MARKER = "model_index.json"

EngineFactory = Callable[[], Any]


def weights_present(weights_dir: Path) -> bool:
    """True when the folder looks like one of the two layouts (HF snapshot or the three ComfyUI files)."""
    if not weights_dir.is_dir():
        return False
    if (weights_dir / HF_MARKER).is_file():
        return True
    return any((weights_dir / name).is_file() for name in COMFY_FILES)


def missing_weights_error(weights_dir: Path, detail: str = "") -> ServiceError:
    """The explanation every door shows when the weights are missing or unusable (503)."""
    # Clients see the folder relative to the working directory and no absolute paths; the log has them.
    logger.error("no usable weights in %s %s", weights_dir.resolve(), detail)
    return ServiceError("weights_missing", status=503, path=public_path(weights_dir), detail=redact(detail))


def engine_factory(settings: Settings) -> EngineFactory:
    """A zero-argument function that loads model.Engine as the settings say (run in the worker thread)."""

    def load() -> Any:
        import torch  # deferred: importing torch costs seconds and the factory only runs in the worker

        from model.engine import Engine
        from model.errors import CheckpointError

        if not weights_present(settings.weights_dir):
            raise missing_weights_error(settings.weights_dir)
        device = None if settings.device == "auto" else settings.device
        logger.info("loading weights from %s (device=%s dtype=%s memory_mode=%s attention=%s)",
                    settings.weights_dir, settings.device, settings.dtype, settings.memory_mode, settings.attention)
        try:
            return Engine.from_pretrained(
                settings.weights_dir, device=device, dtype=getattr(torch, settings.dtype),
                memory_mode=settings.memory_mode, attention_backend=settings.attention,
                compile_blocks=settings.compile_blocks,
            )
        except CheckpointError as err:
            raise missing_weights_error(settings.weights_dir, detail=str(err)) from None

    return load
