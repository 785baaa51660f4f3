"""Device placement: the only code that moves engine components between devices.

A memory mode becomes a `PlacementPlan` by a pure function of (mode, device budget, component
footprints), so tests can check the policy without a GPU; `MemoryManager` then executes the plan.

Modes:
- full: every component resident on the device.
- balanced: transformer and VAE resident; the text encoder lives on the CPU and comes to the device only
  while encoding: whole when it fits beside the transformer, else streamed one decoder layer at a time.
- low: the transformer's block projections stored in fp8 (bf16 compute), resident when that fits, else
  streamed block by block; the text encoder streamed; the VAE resident.
- auto: the first of full, balanced, low whose estimated peak for a 1024x1024 image fits the budget.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from model.block_streaming import BlockStreamer, repeated_blocks
from model.errors import OutOfMemoryError
from model.fp8 import fp8_weight_bytes, quantize_linears_fp8
from model.request import GenerationRequest
from model.vram import REFERENCE_REQUEST, Admission, ModelDims, RequestShape, check_request, estimate_peak

logger = logging.getLogger(__name__)

MEMORY_MODES = ("full", "balanced", "low", "auto")
RESIDENT, ON_DEMAND, STREAMED = "resident", "on_demand", "streamed"
QUANTIZABLE = ("transformer",)


@dataclass(frozen=True)
class Footprint:
    """Weight bytes of one component, split the way placement decisions need them."""

    total_bytes: int
    largest_block_bytes: int = 0  # biggest entry of its repeated block lists (0: none)
    block_bytes: int = 0  # all repeated blocks together
    fp8_total_bytes: int | None = None  # total once block projections are fp8 (None: not quantizable)

    @property
    def rest_bytes(self) -> int:
        """Bytes outside the repeated blocks (embeddings, norms, heads)."""
        return self.total_bytes - self.block_bytes

    def scaled(self, fp8: bool) -> "Footprint":
        """This footprint with fp8 storage applied uniformly to the block parts."""
        if not fp8 or self.fp8_total_bytes is None or self.block_bytes == 0:
            return self
        ratio = 1 - (self.total_bytes - self.fp8_total_bytes) / self.block_bytes
        return Footprint(self.fp8_total_bytes, int(self.largest_block_bytes * ratio),
                         int(self.block_bytes * ratio), self.fp8_total_bytes)


@dataclass(frozen=True)
class ComponentPlan:
    """Where one component lives: resident, moved whole for its stage, or streamed per block; fp8 or not."""

    residency: str = RESIDENT
    fp8: bool = False

    def device_bytes_between_uses(self, footprint: Footprint) -> int:
        """Bytes this component keeps on the device while another stage runs."""
        return footprint.scaled(self.fp8).total_bytes if self.residency == RESIDENT else 0

    def device_bytes_in_use(self, footprint: Footprint) -> int:
        """Peak bytes of this component's weights on the device while its own stage runs."""
        stored = footprint.scaled(self.fp8)
        if self.residency == STREAMED:
            return stored.rest_bytes + 2 * stored.largest_block_bytes  # running block + prefetched one
        return stored.total_bytes


@dataclass(frozen=True)
class PlacementPlan:
    """The resolved placement of every component for one memory mode and device budget."""

    mode: str  # never "auto": the mode auto resolved to
    requested_mode: str
    budget_bytes: int | None
    components: Mapping[str, ComponentPlan]

    def component(self, name: str) -> ComponentPlan:
        return self.components.get(name, ComponentPlan())

    def describe(self) -> dict:
        return {"mode": self.mode, "requested_mode": self.requested_mode, "budget_bytes": self.budget_bytes,
                **{name: {"residency": c.residency, "fp8": c.fp8} for name, c in self.components.items()}}


def _plan(mode: str, requested: str, budget: int | None, **components: ComponentPlan) -> PlacementPlan:
    return PlacementPlan(mode=mode, requested_mode=requested, budget_bytes=budget, components=components)


def _fits(plan: PlacementPlan, footprints: Mapping[str, Footprint], dims: ModelDims | None) -> bool:
    if plan.budget_bytes is None:
        return True
    return estimate_peak(plan, footprints, REFERENCE_REQUEST, dims).total_bytes <= plan.budget_bytes


def plan_placement(mode: str, budget_bytes: int | None, footprints: Mapping[str, Footprint],
                   dims: ModelDims | None = None, requested_mode: str | None = None) -> PlacementPlan:
    """Pure policy: the placement for `mode` given the device budget (None: unbounded, e.g. CPU).

    Where a mode has two variants, the roomier one is taken when a 1024x1024 image fits the budget with it.
    """
    requested = requested_mode or mode
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    if mode == "full":
        return _plan("full", requested, budget_bytes, text_encoder=ComponentPlan(), transformer=ComponentPlan(),
                     vae=ComponentPlan())
    if mode == "balanced":
        whole = _plan("balanced", requested, budget_bytes, text_encoder=ComponentPlan(ON_DEMAND),
                      transformer=ComponentPlan(), vae=ComponentPlan())
        if _fits(whole, footprints, dims):
            return whole
        return _plan("balanced", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                     transformer=ComponentPlan(), vae=ComponentPlan())
    if mode == "low":
        resident = _plan("low", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                         transformer=ComponentPlan(RESIDENT, fp8=True), vae=ComponentPlan())
        if _fits(resident, footprints, dims):
            return resident
        return _plan("low", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                     transformer=ComponentPlan(STREAMED, fp8=True), vae=ComponentPlan())
    for candidate in ("full", "balanced", "low"):
        plan = plan_placement(candidate, budget_bytes, footprints, dims, requested_mode="auto")
        if _fits(plan, footprints, dims):
            return plan
    return plan  # nothing fits a 1024x1024 image: the smallest plan; admission refuses what cannot run


def measure_footprint(module: nn.Module, quantizable: bool = False) -> Footprint:
    """Footprint of a module's parameters and buffers (works on meta-device modules too)."""
    def nbytes(m: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    blocks = [nbytes(b) for b in repeated_blocks(module)]
    return Footprint(total_bytes=nbytes(module), largest_block_bytes=max(blocks, default=0),
                     block_bytes=sum(blocks), fp8_total_bytes=fp8_weight_bytes(module) if quantizable else None)


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

    def admit(self, request: GenerationRequest, text_tokens: int | None = None) -> Admission:
        """Admission of `request` against the memory this process can use on the device now."""
        shape = RequestShape.from_request(request, text_tokens)
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
