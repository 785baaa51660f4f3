"""Builds the engine from the settings, and tells "no weights here" apart from "weights are broken"."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from app.errors import ServiceError
from app.redaction import public_path, redact
from app.settings import Settings, resolve_dtype
from model.loading.layout import find_layout
from model.protocol import EngineProtocol
from model.request import EngineLimits, GenerationRequest, GenerationResult, StepCallback, StepProgress

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], EngineProtocol]


def missing_weights_error(weights_dir: Path, detail: str = "") -> ServiceError:
    """The explanation every door shows when the weights are missing or unusable (503)."""
    # Clients see the folder relative to the working directory and no absolute paths; the log has them.
    logger.error("no usable weights in %s %s", weights_dir.resolve(), detail)
    return ServiceError("weights_missing", status=503, path=public_path(weights_dir), detail=redact(detail))


def engine_factory(settings: Settings) -> EngineFactory:
    """A zero-argument function that loads model.Engine as the settings say (run in the worker thread)."""

    def load() -> EngineProtocol:
        # Recognised the way the engine recognises it (model.loading.layout), before torch is imported.
        if find_layout(settings.weights_dir) is None:
            raise missing_weights_error(settings.weights_dir)
        import torch  # deferred: importing torch costs seconds and the factory only runs in the worker

        from model.engine import Engine
        from model.errors import CheckpointError

        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(settings.dtype, device)
        logger.info("loading weights from %s (device=%s dtype=%s memory_mode=%s attention=%s)",
                    settings.weights_dir, device, dtype, settings.memory_mode, settings.attention)
        try:
            engine = Engine.from_pretrained(
                settings.weights_dir, device=device, dtype=getattr(torch, dtype),
                memory_mode=settings.memory_mode, attention_backend=settings.attention,
                compile_blocks=settings.compile_blocks, fuse_projections=settings.fuse_projections,
                compile_mode=None if settings.compile_mode == "off" else settings.compile_mode,
                fp8_matmul=settings.fp8_matmul,
            )
        except CheckpointError as err:
            raise missing_weights_error(settings.weights_dir, detail=str(err)) from None
        return SlowedSteps(engine, settings.debug_step_delay) if settings.debug_step_delay else engine

    return load


class SlowedSteps:
    """The engine with the `debug_step_delay` test knob: `seconds` slept after each step, before the step is
    reported. Applied where the engine runs (this process, or a Ray replica), so a step is slowed once; a
    Stop pressed during the sleep is seen right after it, before the next step starts."""

    def __init__(self, engine: EngineProtocol, seconds: float):
        self._engine = engine
        self._seconds = seconds

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        def slowed(progress: StepProgress) -> None:
            time.sleep(self._seconds)
            if on_step is not None:
                on_step(progress)

        return self._engine.generate(request, on_step=slowed)

    def count_tokens(self, prompt: str) -> int:
        return self._engine.count_tokens(prompt)

    def describe(self) -> dict[str, Any]:
        return self._engine.describe()

    def warmup(self, sizes: Sequence[tuple[int, int]] = ()) -> None:
        self._engine.warmup(sizes)  # the engine's own generate: warm-up is not slowed

    @property
    def limits(self) -> EngineLimits:
        return self._engine.limits
