"""Offloading: a module whose weights live on the CPU, brought to the device whole or one block at a time.

Forward hooks bring each block's tensors to the device just before it runs and drop them right after.
On CUDA the CPU copies are pinned and the block expected next is copied on a side stream while the
current one computes, so transfers overlap compute; "expected next" is learned from the order in which
blocks actually ran (so the first main layer follows the last one of the previous step).
Used by model.memory.manager only; nothing else moves modules between devices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """Entries of the module's outermost ModuleLists (transformer layers, refiners, decoder layers)."""
    blocks: list[nn.Module] = []
    covered: list[str] = []
    for name, child in module.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            covered.append(name)
            blocks.extend(child)
    return blocks


@dataclass
class _Slot:
    """One tensor of a streamed part: its owner module, attribute name and CPU home copy."""

    owner: nn.Module
    name: str
    is_param: bool
    home: torch.Tensor


@dataclass
class _Part:
    """A group of tensors moved together (one block, or the non-block rest)."""

    slots: list[_Slot] = field(default_factory=list)
    loaded: bool = False
    ready: "torch.cuda.Event | None" = None  # set when loaded by a prefetch on the side stream


def _collect(modules: list[nn.Module], skip: set[int], pin: bool) -> _Part:
    part = _Part()
    for module in modules:
        for sub in module.modules():
            if id(sub) in skip:
                continue
            for is_param, name, tensor in [*((True, n, p) for n, p in sub._parameters.items()),
                                           *((False, n, b) for n, b in sub._buffers.items())]:
                if tensor is None:
                    continue
                home = tensor.data.pin_memory() if pin and tensor.device.type == "cpu" else tensor.data
                if is_param:
                    home = nn.Parameter(home, requires_grad=False)
                slot = _Slot(sub, name, is_param, home)
                BlockStreamer._set(slot, home)  # the module now holds the pinned copy, not a second one
                part.slots.append(slot)
    return part


class BlockStreamer:
    """Keeps a module's weights on the CPU and brings them to `device` while it is used.

    With `stream_blocks` the repeated blocks come one at a time as they run (the rest on attach);
    without it the whole module comes on attach. Detaching drops the device copies (no copy back).
    """

    def __init__(self, module: nn.Module, device: torch.device, stream_blocks: bool = True):
        self.device = torch.device(device)
        blocks = repeated_blocks(module) if stream_blocks else []
        if stream_blocks and not blocks:
            raise ValueError(f"{type(module).__name__} has no repeated blocks to stream")
        cuda = self.device.type == "cuda"
        block_ids = {id(m) for b in blocks for m in b.modules()}
        self._blocks = [_collect([b], set(), pin=cuda) for b in blocks]
        self._rest = _collect([module], block_ids, pin=cuda)
        self._side = torch.cuda.Stream(self.device) if cuda and blocks else None
        self._successor: dict[int, int] = {}
        self._last_run: int | None = None
        self.attached = False
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(self._pre_hook(index))
            block.register_forward_hook(self._post_hook(index))

    def attach(self) -> None:
        """Bring the non-block tensors (all of them without block streaming) to the device."""
        if not self.attached:
            self._load(self._rest, prefetch=False)
            self.attached = True

    def detach(self) -> None:
        """Return everything to the CPU."""
        self.release_blocks()
        self._unload(self._rest)
        self.attached = False

    def release_blocks(self) -> None:
        """Drop blocks still on the device (a prefetched block that did not run, or after an error)."""
        for part in self._blocks:
            self._unload(part)
        self._last_run = None

    def _pre_hook(self, index: int):
        def hook(_module: nn.Module, _args: tuple) -> None:
            if self._last_run is not None:
                self._successor[self._last_run] = index
            self._last_run = index
            self._ensure_loaded(self._blocks[index])
            following = self._successor.get(index, index + 1)
            if following < len(self._blocks) and following != index:
                self._load(self._blocks[following], prefetch=True)
        return hook

    def _post_hook(self, index: int):
        def hook(_module: nn.Module, _args: tuple, _output: object) -> None:
            self._unload(self._blocks[index])
        return hook

    def _ensure_loaded(self, part: _Part) -> None:
        if not part.loaded:
            self._load(part, prefetch=False)
        elif part.ready is not None:
            # The copy ran on the side stream: order the compute after it, and tell the allocator these
            # tensors are used on the compute stream so their memory is not reused too early.
            current = torch.cuda.current_stream(self.device)
            current.wait_event(part.ready)
            for slot in part.slots:
                self._get(slot).record_stream(current)
            part.ready = None

    def _load(self, part: _Part, prefetch: bool) -> None:
        if part.loaded:
            return
        if prefetch and self._side is not None:
            with torch.cuda.stream(self._side):
                for slot in part.slots:
                    self._set(slot, slot.home.to(self.device, non_blocking=True))
                part.ready = torch.cuda.Event()
                part.ready.record(self._side)
        else:
            for slot in part.slots:
                self._set(slot, slot.home.to(self.device, non_blocking=True))
        part.loaded = True

    def _unload(self, part: _Part) -> None:
        if not part.loaded:
            return
        if part.ready is not None:  # prefetched but never used: wait for the copy before dropping it
            torch.cuda.current_stream(self.device).wait_event(part.ready)
            part.ready = None
        for slot in part.slots:
            self._set(slot, slot.home)
        part.loaded = False

    @staticmethod
    def _get(slot: _Slot) -> torch.Tensor:
        return (slot.owner._parameters if slot.is_param else slot.owner._buffers)[slot.name]

    @staticmethod
    def _set(slot: _Slot, tensor: torch.Tensor) -> None:
        # Whole Parameter objects are swapped (not `.data`), which works across every device type;
        # the home Parameter itself is put back on unload, so its identity survives offloading.
        if slot.is_param and not isinstance(tensor, nn.Parameter):
            tensor = nn.Parameter(tensor, requires_grad=False)
        (slot.owner._parameters if slot.is_param else slot.owner._buffers)[slot.name] = tensor
