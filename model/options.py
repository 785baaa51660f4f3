"""The engine's load options, torch-free so settings and docs can name them without importing the engine."""

from __future__ import annotations

# Memory placement modes (model.memory.planner): "auto" picks the roomiest that fits a 1024x1024 image.
MEMORY_MODES = ("full", "balanced", "low", "auto")
# Attention backends (model.network.attention): "auto" takes flash-attn when installed, else PyTorch SDPA.
ATTENTION_BACKENDS = ("auto", "sdpa", "flash")
# torch.compile modes for the whole transformer step (model.runtime.compile.compile_transformer).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
# How fp8-stored projections multiply (model.memory.fp8): upcast weights, or fp8 GEMM with dynamic activation scales.
FP8_MATMULS = ("weight-only", "dynamic")
