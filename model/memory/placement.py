"""Placement data: what a component weighs (`Footprint`) and where a plan puts it (`PlacementPlan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import nn

from model.memory.fp8 import fp8_weight_bytes
from model.memory.streaming import repeated_blocks

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


def measure_footprint(module: nn.Module, quantizable: bool = False) -> Footprint:
    """Footprint of a module's parameters and buffers (works on meta-device modules too)."""
    def nbytes(m: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    blocks = [nbytes(b) for b in repeated_blocks(module)]
    return Footprint(total_bytes=nbytes(module), largest_block_bytes=max(blocks, default=0),
                     block_bytes=sum(blocks), fp8_total_bytes=fp8_weight_bytes(module) if quantizable else None)
