"""Optional torch.compile of the transformer's repeated blocks (a setting, off by default).

Only the blocks are compiled, in place (`nn.Module.compile`), so parameter names, checkpoint loading and
LoRA merging see the same module tree. Shapes vary with image size and caption length, so the blocks are
compiled with dynamic shapes: one compilation covers every size instead of one per size. Not for a
streamed transformer: its blocks swap weights in forward hooks, which compiled code would freeze.
"""

from __future__ import annotations

import logging

from torch import nn

from model.memory.streaming import repeated_blocks

logger = logging.getLogger(__name__)


def compile_repeated_blocks(transformer: nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated block of `transformer` in place; returns how many were compiled."""
    blocks = repeated_blocks(transformer)
    for block in blocks:
        if block._forward_pre_hooks or block._forward_hooks:
            raise ValueError("blocks with forward hooks (a streamed transformer) cannot be compiled; "
                             "use memory mode 'full' or 'balanced' with compile")
        block.compile(backend=backend, dynamic=True)
    logger.info("compiling %d transformer blocks with torch.compile (%s); the first image of each new "
                "shape class takes longer", len(blocks), backend)
    return len(blocks)
