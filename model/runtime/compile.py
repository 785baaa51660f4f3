"""Optional torch.compile of the transformer (settings, off by default).

Two granularities, both in place so parameter names, checkpoint loading and LoRA merging see the same
module tree:
- `compile_repeated_blocks`: each repeated block (`nn.Module.compile`), dynamic shapes, one compilation
  for every size.
- `compile_transformer`: the whole transformer step (`ZImageTransformer._step`: embedders, refiners, main
  layers, final layer) as one graph. The step has no graph breaks and no host syncs (what depends on
  the shapes, RoPE tables and masks, is built once per request outside it; tests/model/test_compile.py
  checks it with torch._dynamo.explain), and its shapes are fixed for a whole request, so
  "reduce-overhead" can record it as a CUDA graph on the first step and replay it on the others.
  With torch's default `dynamic=None` the first shape compiles static and the first change of a size
  recompiles it as dynamic: a second caption length makes every caption length reuse the graph
  (measured on the CPU at tiny size: 2 compilations for captions of 7, 40, 70 and 100 tokens). That is
  what Engine.warmup(sizes) relies on; `dynamic=False` compiles each (image size, caption length) anew.
Neither is for a streamed transformer: its blocks swap weights in forward hooks, which compiled code
would freeze.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from model.memory.streaming import repeated_blocks
from model.options import COMPILE_MODES

logger = logging.getLogger(__name__)



def compile_repeated_blocks(transformer: nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated block of `transformer` in place; returns how many were compiled."""
    blocks = _refuse_hooked_blocks(transformer)
    for block in blocks:
        block.compile(backend=backend, dynamic=True)
    logger.info("compiling %d transformer blocks with torch.compile (%s); the first image of each new "
                "shape class takes longer", len(blocks), backend)
    return len(blocks)


def compile_transformer(transformer: nn.Module, mode: str = "default", backend: str | Callable = "inductor",
                        dynamic: bool | None = None) -> None:
    """Compile the transformer's step as one graph, in place (`transformer._step` becomes the compiled one).

    `mode` is torch.compile's ("reduce-overhead" adds CUDA graphs; "max-autotune-no-cudagraphs" tunes the
    matmuls without them). Forward hooks added after compiling (the runtime LoRA path of fp8 layers) are
    guarded, so a LoRA switch recompiles instead of being silently ignored.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    _refuse_hooked_blocks(transformer)
    if "_step" in vars(transformer):
        raise ValueError("this transformer's step is compiled already")
    compiled = torch.compile(transformer._step, mode=None if mode == "default" else mode, backend=backend,
                             dynamic=dynamic, fullgraph=True)

    def step(*args, **kwargs):
        # torch.compile skips guards on nn.Module hooks by default; LoRA hooks must invalidate the graph.
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            return compiled(*args, **kwargs)

    transformer._step = step
    logger.info("compiling the transformer step as one graph (torch.compile mode %s, %s, dynamic=%s); "
                "each new image size or caption length compiles on first use", mode, backend, dynamic)


def _refuse_hooked_blocks(transformer: nn.Module) -> list[nn.Module]:
    blocks = repeated_blocks(transformer)
    if any(block._forward_pre_hooks or block._forward_hooks for block in blocks):
        raise ValueError("blocks with forward hooks (a streamed transformer) cannot be compiled; "
                         "use memory mode 'full' or 'balanced' with compile")
    return blocks
