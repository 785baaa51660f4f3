"""LoRAs on the transformer: load files, apply a per-request set, restore the base weights exactly.

Plain Linear weights (fp32/bf16/fp16) get the update merged in: W <- W + sum(strength * scale *
up @ down), computed in fp32 and stored in the weight's dtype, after a CPU copy of the untouched
weight is kept (pinned when the weight is on a GPU). Restoring copies those bytes back, so
removing LoRAs is bit-exact (merging and subtracting in bf16 would not be). Copies of layers the
next set touches again are kept across switches: measured on an H200 with the full-size bf16
model and a rank-32 LoRA on 271 layers (every attention, feed-forward and adaLN Linear), the first
activation took 7.3 s (12.3 GB copied to pinned host memory), each later switch 0.26-0.35 s, and
merged inference has no overhead.

Any other Linear-like module (the fp8 weight storage of the `low` memory mode, model.memory.fp8) gets a
runtime low-rank path instead: a forward hook adding (x @ down_all^T) @ up_all^T. Merging would
need a re-quantization per switch and would lose most of the update in e4m3 rounding; the hook
keeps the fp8 weights untouched (same measurement: 0.07 s to activate, +17 % per forward).

A fused layer (model.network.fused: to_qkv, w13) is addressed by the names of its parts, so LoRA files
naming to_q/to_k/to_v/w1/w3 apply to its row slices; its saved copy is the whole fused weight, so
removal stays bit-exact.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from torch import nn

from model.errors import CheckpointError
from model.loading.safetensors_io import read_state_dict
from model.lora.formats import SHOW_FIRST, ConvertedLora, LoraError, LowRankDelta, convert_lora
from model.network.fused import part_rows
from model.request import LoraSpec

logger = logging.getLogger(__name__)

__all__ = ["LoraError", "LoraManager", "LoraReport", "file_sha256"]

LORA_SUFFIX = ".safetensors"
MERGEABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class LoraReport:
    """What one LoRA of the active set did: keys used, keys it could not place, how it was applied."""

    name: str
    path: str
    sha256: str
    scale: float
    matched_keys: int
    unmatched_keys: tuple[str, ...]
    redundant_keys: tuple[str, ...]  # repeated ComfyUI spellings of modules the file also names
    modules: int


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, cached while its size and modification time stay the same."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Layer:
    """A LoRA-addressable layer: a whole Linear(-like) module, or the rows of one part of a fused one."""

    module_name: str
    module: nn.Module
    rows: slice | None = None  # None: every output row

    @property
    def shape(self) -> tuple[int, int]:
        rows = self.module.out_features if self.rows is None else self.rows.stop - self.rows.start
        return rows, self.module.in_features


# (update, strength * alpha scale, output rows of the module it changes)
_Term = tuple[LowRankDelta, float, "slice | None"]


@dataclass(frozen=True)
class _LoadedLora:
    """A LoRA file read and mapped onto this transformer."""

    converted: ConvertedLora
    sha256: str


class LoraManager:
    """Keeps the transformer's weights equal to base + exactly the requested set of LoRAs."""

    def __init__(self, transformer: nn.Module, *, runtime_only: bool = False, cache_size: int = 4):
        # torch.compile wraps the module; LoRA names refer to the original module tree.
        self._transformer = getattr(transformer, "_orig_mod", transformer)
        self._runtime_only = runtime_only
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple, _LoadedLora] = OrderedDict()
        self._saved: dict[str, torch.Tensor] = {}  # module name -> CPU copy of its base weight
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._active_key: tuple = ()
        self._reports: list[LoraReport] = []

    @property
    def reports(self) -> list[LoraReport]:
        """Reports of the set currently applied ([] when none)."""
        return list(self._reports)

    def activate(self, specs: Iterable[LoraSpec]) -> list[LoraReport]:
        """Apply exactly `specs` (in order), replacing the current set; a no-op if it is the same.

        Every file is read, mapped and checked before any weight changes, so a refused LoRA
        (LoraError) leaves the current weights as they were. Call it between generations, outside
        `MemoryManager.use("transformer")`: a streamed block then holds only its CPU home copy,
        which is what must be changed.
        """
        specs = tuple(specs)
        key = tuple((_file_identity(spec), float(spec.scale)) for spec in specs)
        if key == self._active_key:
            return self.reports
        layers = self._linear_layers()
        loaded = [self._load(spec, file_id, layers) for spec, (file_id, _) in zip(specs, key)]
        terms = _terms_by_module(specs, loaded, layers)
        modules = {layer.module_name: layer.module for layer in layers.values()}
        try:
            self._restore(keep_copies={name for name in terms if self._mergeable(modules[name])})
            self._apply(terms, modules)
        except BaseException:
            self.clear()
            raise
        self._active_key = key
        self._reports = [_report(spec, lora) for spec, lora in zip(specs, loaded)]
        for report in self._reports:
            _log_report(report)
        return self.reports

    def clear(self) -> None:
        """Remove every LoRA: base weights copied back bit for bit, runtime hooks removed."""
        self._restore(keep_copies=set())
        self._active_key = ()
        self._reports = []

    def _restore(self, keep_copies: set[str]) -> None:
        """Base weights back and hooks off; the copies of layers the next set merges again are
        kept, so switching sets costs one host-to-device copy instead of a round trip."""
        modules = dict(self._transformer.named_modules())
        with torch.no_grad():
            for name in list(self._saved):
                modules[name].weight.copy_(self._saved[name])
                if name not in keep_copies:
                    del self._saved[name]
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()

    def _linear_layers(self) -> dict[str, _Layer]:
        """Every Linear or Linear-like (fp8) module by name, a fused one by its parts' names; looked up
        afresh since memory modes swap modules."""
        layers = {}
        for name, module in self._transformer.named_modules():
            if not (isinstance(getattr(module, "in_features", None), int)
                    and isinstance(getattr(module, "out_features", None), int)):
                continue
            parts = getattr(module, "fused_parts", None)
            if parts is None:
                layers[name] = _Layer(name, module)
                continue
            parent = name.rpartition(".")[0]
            for part, rows in part_rows(parts).items():
                layers[f"{parent}.{part}" if parent else part] = _Layer(name, module, rows)
        return layers

    def _load(self, spec: LoraSpec, file_id: tuple, layers: dict[str, _Layer]) -> _LoadedLora:
        """The file mapped onto this transformer, from the small cache while the file is unchanged."""
        if file_id in self._cache:
            self._cache.move_to_end(file_id)
            return self._cache[file_id]
        path = Path(spec.path)
        tensors, metadata = _read_lora_file(path)
        shapes = {name: layer.shape for name, layer in layers.items()}
        loaded = _LoadedLora(convert_lora(tensors, metadata, shapes, str(path)), file_sha256(path))
        self._cache[file_id] = loaded
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return loaded

    def _apply(self, terms: dict[str, list[_Term]], modules: dict[str, nn.Module]) -> None:
        for name, module_terms in terms.items():
            module = modules[name]
            if self._mergeable(module):
                self._merge(name, module, module_terms)
            else:
                self._hooks[name] = module.register_forward_hook(_LowRankHook(module_terms, module.out_features))

    def _mergeable(self, module: nn.Module) -> bool:
        return (not self._runtime_only and isinstance(module, nn.Linear)
                and module.weight.dtype in MERGEABLE_DTYPES)

    def _merge(self, name: str, module: nn.Linear, terms: list[_Term]) -> None:
        weight = module.weight
        if name not in self._saved:
            self._saved[name] = _host_copy(weight)
        with torch.no_grad():
            merged = weight.float()
            for delta, scale, rows in terms:
                up = delta.up.to(weight.device, torch.float32)
                down = delta.down.to(weight.device, torch.float32)
                (merged if rows is None else merged[rows]).addmm_(up, down, alpha=scale)
            weight.copy_(merged)


class _LowRankHook:
    """Forward hook adding sum_i s_i * up_i(down_i(x)) to a module's output, as one stacked pair."""

    def __init__(self, terms: list[_Term], out_features: int):
        self._down = torch.cat([delta.down.float() for delta, _, _ in terms], dim=0)
        self._up = torch.cat([_full_rows(delta.up.float() * scale, rows, out_features)
                              for delta, scale, rows in terms], dim=1)
        self._placed: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # In the output's dtype: an fp8 layer computes in its own compute dtype, whatever x is.
        down, up = self._on(output.device, output.dtype)
        x = args[0].to(output.dtype)
        return output + torch.nn.functional.linear(torch.nn.functional.linear(x, down), up)

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The matrices on the activation's device/dtype, converted once (memory modes move x)."""
        placed = self._placed
        if placed is None or placed[0].device != device or placed[0].dtype != dtype:
            placed = (self._down.to(device, dtype), self._up.to(device, dtype))
            self._placed = placed
        return placed


def _full_rows(up: torch.Tensor, rows: slice | None, out_features: int) -> torch.Tensor:
    """An up matrix of one part of a fused layer as one of the whole layer (zero outside the part)."""
    if rows is None:
        return up
    full = up.new_zeros(out_features, up.shape[1])
    full[rows] = up
    return full


def _terms_by_module(specs: tuple[LoraSpec, ...], loaded: list[_LoadedLora], layers: dict[str, _Layer]
                     ) -> dict[str, list[_Term]]:
    """Module name -> every (update, strength * alpha scale, rows) the set applies to it, in set order."""
    terms: dict[str, list[_Term]] = {}
    for spec, lora in zip(specs, loaded):
        for delta in lora.converted.deltas:
            layer = layers[delta.module]
            terms.setdefault(layer.module_name, []).append((delta, float(spec.scale) * delta.scale, layer.rows))
    return terms


def _host_copy(weight: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a weight; pinned when it lives on a GPU, so restoring runs at full bandwidth."""
    copy = torch.empty(weight.shape, dtype=weight.dtype, device="cpu",
                       pin_memory=weight.device.type == "cuda")
    copy.copy_(weight.detach())
    return copy


def _file_identity(spec: LoraSpec) -> tuple:
    """(path, size, mtime) of a requested LoRA's file, after checking the request is usable."""
    path = Path(spec.path)
    if isinstance(spec.scale, bool) or not isinstance(spec.scale, (int, float)) or not math.isfinite(spec.scale):
        raise LoraError(f"LoRA {spec.name or path.name}: strength {spec.scale!r} is not a finite "
                        "number. Fix: give a number such as 0.8 (negative values are allowed).")
    if path.suffix.lower() != LORA_SUFFIX:
        raise LoraError(f"{path}: only .safetensors LoRA files are loaded (pickle formats such as "
                        ".ckpt/.pt/.bin can run code). Fix: use or convert to the .safetensors version.")
    try:
        stat = path.stat()
    except OSError as exc:
        raise LoraError(f"{path}: LoRA file cannot be opened ({exc.strerror}). Fix: check the LoRA "
                        "folder and the name.") from exc
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a LoRA file; unreadable files become a LoraError."""
    try:
        tensors = read_state_dict(path)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except CheckpointError as exc:
        raise LoraError(str(exc)) from exc
    return tensors, metadata


def _report(spec: LoraSpec, lora: _LoadedLora) -> LoraReport:
    converted = lora.converted
    return LoraReport(
        name=spec.name or Path(spec.path).stem, path=str(spec.path), sha256=lora.sha256,
        scale=float(spec.scale), matched_keys=len(converted.matched_keys),
        unmatched_keys=tuple(converted.unmatched_keys), redundant_keys=tuple(converted.redundant_keys),
        modules=len({delta.module for delta in converted.deltas}),
    )


def _log_report(report: LoraReport) -> None:
    logger.info("LoRA %s (strength %g, sha256 %s): %d keys applied to %d layers",
                report.name, report.scale, report.sha256[:12], report.matched_keys, report.modules)
    if report.unmatched_keys:
        logger.warning("LoRA %s: %d keys name no layer of this model and were NOT applied: %s%s",
                       report.name, len(report.unmatched_keys),
                       ", ".join(report.unmatched_keys[:SHOW_FIRST]),
                       " ..." if len(report.unmatched_keys) > SHOW_FIRST else "")
