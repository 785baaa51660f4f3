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

__all__ = [
    "CheckpointError",
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
