"""Z-Image-Turbo inference engine: S3-DiT transformer, Qwen3 text encoding, Flux VAE, sampler.

The request/result types, errors and options import without torch; `Engine` (which needs torch and
loads the network code) is imported on first use, so `import model.request` stays cheap for the app.
"""

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


def __getattr__(name: str):
    if name == "Engine":
        from model.engine import Engine

        return Engine
    raise AttributeError(f"module 'model' has no attribute {name!r}")
