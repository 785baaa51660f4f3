"""Telling device failures apart: out-of-memory (recoverable) vs CUDA errors that poison the context."""

from __future__ import annotations

import gc


def is_out_of_memory(err: Exception) -> bool:
    import torch  # the worker already has torch loaded through the engine

    return isinstance(err, torch.OutOfMemoryError)


# Messages of CUDA errors after which the context cannot be trusted (unlike out-of-memory).
FATAL_DEVICE_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_", "cuDNN error")


def is_fatal_device_error(err: Exception) -> bool:
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in FATAL_DEVICE_MARKERS)


def free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
