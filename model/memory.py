"""Device placement policy: the only code that moves engine components between devices."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

MEMORY_MODES = ("full",)


class MemoryManager:
    """Keeps named components (text_encoder, transformer, vae) where the mode says they live.

    The engine wraps each stage in `with manager.use(name):`; the manager makes sure the component
    is on the compute device for that block and decides where it goes afterwards.
    """

    def __init__(self, mode: str, device: torch.device, components: dict[str, nn.Module]):
        if mode not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.mode = mode
        self.device = torch.device(device)
        self.components = components
        for module in components.values():
            module.to(self.device)
        logger.info("memory mode %s: all components resident on %s", mode, self.device)

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """Yield component `name` on the compute device for the duration of the block."""
        yield self.components[name]
