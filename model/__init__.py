"""Z-Image-Turbo inference engine: S3-DiT transformer, Qwen3 text encoding, Flux VAE, sampler."""

from model.errors import (
    CheckpointError,
    GenerationCancelled,
    InvalidRequestError,
    OutOfMemoryError,
    ZImageError,
)
from model.request import GenerationRequest, GenerationResult, LoraSpec, StepProgress

__version__ = "0.1.0"

from model.engine import Engine  # noqa: E402  (engine reads __version__ lazily; import has no side effects)

__all__ = [
    "CheckpointError",
    "Engine",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequestError",
    "LoraSpec",
    "OutOfMemoryError",
    "StepProgress",
    "ZImageError",
    "__version__",
]
