"""A test double honouring the model.Engine contract: per-step sleeps, callbacks, cancellation, PIL images."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Sequence

from PIL import Image

from model.control.validation import validate_control
from model.errors import InvalidRequestError
from model.request import ENGINE_LIMITS, EngineLimits, GenerationRequest, GenerationResult, StepCallback, StepProgress


def seed_colour(seed: int) -> tuple[int, int, int]:
    return seed % 256, (seed // 256) % 256, 77


def estimate_colour(seed: int, step: int, total: int) -> tuple[int, int, int]:
    """The fake clean-image estimate after `step` of `total`: grey moving to the final colour."""
    return tuple(round(128 + (channel - 128) * step / total) for channel in seed_colour(seed))


class FakeEngine:
    """Paints each image a colour derived from its seed; sleeps `step_seconds` per step. Like the real engine,
    every StepProgress carries a `preview` that renders small images (1/8 of the size) on call, and control and
    mask fields are refused the way the engine refuses them (model.control.validation, a ControlNet file that
    must exist)."""

    def __init__(self, step_seconds: float = 0.0):
        self.step_seconds = step_seconds
        self.calls: list[GenerationRequest] = []
        self.warmed_up = False

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        if request.width % 16 or request.height % 16:
            raise InvalidRequestError("width and height must be multiples of 16", field="width")
        if request.prompt == "raise-runtime-error":
            raise RuntimeError("simulated engine failure")
        validate_control(request)  # the engine's own mask / control checks (pure PIL, no weights)
        if request.controlnet is not None and not Path(request.controlnet).is_file():
            raise InvalidRequestError(f"controlnet file {request.controlnet} cannot be read", field="controlnet")
        self.calls.append(request)
        seeds = [request.seed + i for i in range(request.batch_size)]
        small = (max(1, request.width // 8), max(1, request.height // 8))
        for step in range(1, request.steps + 1):
            time.sleep(self.step_seconds)
            if on_step is not None:
                preview = partial(lambda done: [Image.new("RGB", small, estimate_colour(s, done, request.steps))
                                                for s in seeds], step)
                on_step(StepProgress(step=step, total=request.steps, sigma=1.0 - step / request.steps,
                                     preview=preview))
        images = [Image.new("RGB", (request.width, request.height), seed_colour(s)) for s in seeds]
        return GenerationResult(images=images, seeds=seeds, prompt_tokens=self.count_tokens(request.prompt),
                                prompt_truncated=False, timings={"text_encoding": 0.001, "denoising": 0.01,
                                                                 "vae_decode": 0.001, "total": 0.012})

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split()) + 8

    def describe(self) -> dict:
        return {"layout": "fake", "weights": {"transformer": "fake.safetensors"}, "dtype": "float32", "device": "cpu",
                "attention_backend": "sdpa", "memory_mode": "full", "version": "test"}

    def warmup(self, sizes: Sequence[tuple[int, int]] = ()) -> None:
        self.warmed_up = True
        self.warmup_sizes = tuple(sizes)

    @property
    def limits(self) -> EngineLimits:
        return ENGINE_LIMITS
