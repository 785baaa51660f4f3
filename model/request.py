"""The engine's public request/result types: what every door of the product builds and reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from PIL import Image


MASK_KEEP, MASK_REPAINT = 0, 255  # the mask's gray levels (every door converts its own mask form to these)


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
    # Inpainting: MASK_REPAINT (white) = repaint, MASK_KEEP (black) = keep; the size of reference_image
    # (model.control.inpaint).
    mask: "Image.Image | None" = None
    # ControlNet Union (model.network.controlnet): a .safetensors path, the control image, how to turn it
    # into a control map (model.control.preprocess.CONTROL_MODES) and one scale for every hint.
    controlnet: str | None = None
    control_image: "Image.Image | None" = None
    control_mode: str = "map"
    control_scale: float = 0.75


# Seeds are one torch.Generator seed each (64 bits); image i of a batch uses seed + i.
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class EngineLimits:
    """Inclusive (low, high) ranges the model honours for each numeric request field.

    The engine refuses anything outside; the app may narrow these (its settings) but never widen them.
    `max_side` (pixels) and `max_prompt_tokens` depend on the checkpoint's RoPE tables: None until one is
    loaded (Engine.limits fills them in).
    """

    steps: tuple[int, int] = (1, 50)
    batch_size: tuple[int, int] = (1, 4)
    guidance: tuple[float, float] = (0.0, 20.0)
    strength: tuple[float, float] = (0.01, 1.0)  # 1 ignores the reference's content; below 0.01 no step runs
    shift: tuple[float, float] = (0.1, 20.0)
    cfg_truncation: tuple[float, float] = (0.0, 1.0)  # normalised time; 1 = never truncate
    cfg_normalization: tuple[float, float] = (0.0, 10.0)  # 0 = off
    seed_variety: tuple[float, float] = (0.0, 10.0)  # x the prompt embedding's std; 0 = off
    seed: tuple[int, int] = (0, MAX_SEED)
    max_side: int | None = None
    max_prompt_tokens: int | None = None

    def range(self, name: str) -> tuple[float, float]:
        return getattr(self, name)

    def narrowed(self, **highs: float) -> "EngineLimits":
        """A copy with lower upper bounds (policy); raises ValueError when one would widen a range."""
        changes = {}
        for name, high in highs.items():
            low, limit = self.range(name)
            if high > limit:
                raise ValueError(f"{name} can be at most {limit} (the engine's limit), got {high}")
            changes[name] = (low, high)
        return dataclasses.replace(self, **changes)


# The request fields EngineLimits gives a range (every (low, high) field above).
RANGED_FIELDS = tuple(f.name for f in dataclasses.fields(EngineLimits) if isinstance(f.default, tuple))
ENGINE_LIMITS = EngineLimits()


def uses_cfg(guidance: float) -> bool:
    """Classifier-free guidance runs (and the negative prompt is encoded) exactly when guidance > 0."""
    return guidance > 0


def encoded_prompts(request: GenerationRequest) -> dict[str, str]:
    """Field name -> text of every prompt the engine encodes for `request` (the negative one only with CFG)."""
    prompts = {"prompt": request.prompt}
    if uses_cfg(request.guidance):
        prompts["negative_prompt"] = request.negative_prompt
    return prompts


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
    """Images in request order, the seed of each, prompt accounting and per-stage seconds.

    `replica` says where the images were made when the engine is one of several replicas (app.serving
    fills it in: replica id, node id, pid, GPU ids, CUDA_VISIBLE_DEVICES); None for an in-process engine.
    """

    images: list["Image.Image"]
    seeds: list[int]
    prompt_tokens: int
    prompt_truncated: bool
    timings: dict[str, float] = field(default_factory=dict)
    replica: dict[str, Any] | None = None
