"""The engine's public request/result types: what every door of the product builds and reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply for a request: a safetensors file and its strength (negative allowed)."""

    path: str
    scale: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines an image. Defaults are the Turbo defaults (8 steps, no CFG)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 8
    guidance: float = 0.0
    seed: int = 0
    batch_size: int = 1
    reference_image: "Image.Image | None" = None
    strength: float = 0.6
    shift: float = 3.0
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    max_sequence_length: int = 512
    loras: tuple[LoraSpec, ...] = ()
    sampler: str = "euler"  # a key of model.sampling.catalog.SAMPLERS
    seed_variety: float = 0.0  # x the prompt embedding's std, on the early steps (model.sampling.seed_variety)
    # Inpainting: white = repaint, same size as reference_image (model.control.inpaint).
    mask: "Image.Image | None" = None
    # ControlNet Union (model.network.controlnet): a .safetensors path, the control image, how to turn it
    # into a control map (model.control.preprocess.CONTROL_MODES) and one scale for every hint.
    controlnet: str | None = None
    control_image: "Image.Image | None" = None
    control_mode: str = "map"
    control_scale: float = 0.75


@dataclass(frozen=True)
class StepProgress:
    """Reported after each transformer step; `step` counts from 1 up to `total`.

    `preview`, when set, renders the model's current clean-image estimate as small RGB images (one per
    image of the batch part, at most 256 px a side; model.sampling.preview); it costs nothing until called.
    """

    step: int
    total: int
    sigma: float
    preview: "Callable[[], list[Image.Image]] | None" = field(default=None, compare=False, repr=False)


# A callback receives StepProgress after every step; raising GenerationCancelled stops the run.
StepCallback = Callable[[StepProgress], None]


@dataclass
class GenerationResult:
    """Images in request order, the seed of each, prompt accounting and per-stage seconds."""

    images: list["Image.Image"]
    seeds: list[int]
    prompt_tokens: int
    prompt_truncated: bool
    timings: dict[str, float] = field(default_factory=dict)
