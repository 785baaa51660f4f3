"""Device placement: the only code that moves engine components between devices (it executes a plan
from model.memory.planner)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Iterator

import torch
from torch import nn

from model.errors import OutOfMemoryError
from model.memory.fp8 import quantize_linears_fp8
from model.memory.placement import QUANTIZABLE, RESIDENT, STREAMED, ComponentPlan, measure_footprint
from model.memory.planner import plan_controlnet, plan_placement
from model.memory.streaming import BlockStreamer
from model.memory.vram import REFERENCE_REQUEST, Admission, ModelDims, RequestShape, check_request, estimate_peak
from model.request import GenerationRequest

logger = logging.getLogger(__name__)


def device_budget(device: torch.device) -> int | None:
    """Bytes this process may use on `device`: free memory plus what its allocator already holds."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device)


class MemoryManager:
    """Executes a PlacementPlan for named components (text_encoder, transformer, vae).

    The engine wraps each stage in `with manager.use(name):`; the manager makes sure the component is
    on the compute device for that block and decides where it goes afterwards.
    """

    def __init__(self, mode: str, device: torch.device | str, components: dict[str, nn.Module],
                 budget_bytes: int | None = None):
        """`budget_bytes` caps what this engine may use on the device (default: what is free there)."""
        self.device = torch.device(device)
        self.budget_cap = budget_bytes
        self.components = components
        self.footprints = {name: measure_footprint(m, quantizable=name in QUANTIZABLE)
                           for name, m in components.items()}
        self.dims = ModelDims.from_components(components)
        budget = budget_bytes if budget_bytes is not None else device_budget(self.device)
        self.plan = plan_placement(mode, budget, self.footprints, self.dims)
        self.mode = self.plan.mode
        self._offloaded: dict[str, BlockStreamer] = {}
        reference = estimate_peak(self.plan, self.footprints, REFERENCE_REQUEST, self.dims).total_bytes
        try:
            for name, module in components.items():
                self._place(name, module, self.plan.component(name))
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemoryError(
                f"memory mode '{self.plan.mode}' needs about {reference / 2**30:.1f} GiB on {self.device} for a "
                f"1024x1024 image and the weights did not fit; start with memory mode 'auto' (or 'balanced' "
                f"for 16 GB cards, 'low' for 12 GB cards)") from None
        logger.info("memory mode %s (asked %s): %s; a 1024x1024 image needs about %.1f GiB of %s",
                    self.plan.mode, mode, self.plan.describe(), reference / 2**30,
                    "an unbounded budget" if budget is None else f"{budget / 2**30:.1f} GiB")

    def _place(self, name: str, module: nn.Module, placement: ComponentPlan) -> None:
        if placement.fp8:
            quantize_linears_fp8(module, device=self.device if placement.residency == RESIDENT else None)
        if placement.residency == RESIDENT:
            module.to(self.device)
            return
        module.to("cpu")
        offloaded = BlockStreamer(module, self.device, stream_blocks=placement.residency == STREAMED)
        if name == "transformer" and placement.residency == STREAMED:
            # Its small non-block part runs every step: keep it resident, stream only the blocks.
            offloaded.attach()
        self._offloaded[name] = offloaded

    def add_controlnet(self, module: nn.Module) -> None:
        """Place a ControlNet loaded after start (model.memory.planner.plan_controlnet); replaces any other."""
        self.remove("controlnet")
        self.components["controlnet"] = module
        self.footprints["controlnet"] = measure_footprint(module, quantizable=True)  # low mode stores it in fp8
        self.plan = plan_controlnet(self.plan, self.footprints, self.dims)
        placement = self.plan.component("controlnet")
        logger.info("ControlNet placed: %s%s", placement.residency, " (fp8 block projections)" if placement.fp8 else "")
        self._place("controlnet", module, placement)

    def remove(self, name: str) -> None:
        """Forget a component placed with add_controlnet; its weights go back to the CPU (then to the GC)."""
        module = self.components.pop(name, None)
        if module is None:
            return
        self.footprints.pop(name)
        self._offloaded.pop(name, None)
        self.plan = replace(self.plan, components={k: v for k, v in self.plan.components.items() if k != name})
        module.to("cpu")

    def admit(self, request: GenerationRequest, text_tokens: int | None = None) -> Admission:
        """Admission of `request` against the memory this process can use on the device now."""
        hints = getattr(self.components.get("controlnet"), "hint_count", 0)
        shape = RequestShape.from_request(request, text_tokens, control_hints=hints)
        available = device_budget(self.device)
        if self.budget_cap is not None:
            available = self.budget_cap if available is None else min(available, self.budget_cap)
        return check_request(self.plan, self.footprints, shape, available, self.dims)

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """Yield component `name` on the compute device for the duration of the block."""
        module = self.components[name]
        offloaded = self._offloaded.get(name)
        if offloaded is None:
            yield module
            return
        attached_before = offloaded.attached
        offloaded.attach()
        try:
            yield module
        finally:
            offloaded.release_blocks()
            if not attached_before:
                offloaded.detach()
