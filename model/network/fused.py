"""Fused projections: one Linear computing what several Linears of the same input computed.

q/k/v of each attention (`to_qkv` = rows of to_q, to_k, to_v) and the SwiGLU gate/up pair of each
feed-forward (`w13` = rows of w1, w3) become one matmul each: one read of the activations and one
launch instead of three or two. The fused module records its parts, so code that addresses layers
by their diffusers names (LoRA files target to_q/to_k/to_v/w1/w3) can map a name onto its rows.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

QKV_PARTS = ("to_q", "to_k", "to_v")
GATE_UP_PARTS = ("w1", "w3")
# fused attribute -> the attributes whose weights it concatenates (row order = this order)
FUSED_NAMES = {"to_qkv": QKV_PARTS, "w13": GATE_UP_PARTS}


class FusedLinear(nn.Linear):
    """A bias-free Linear whose output rows are the named parts, concatenated in order."""

    def __init__(self, in_features: int, parts: tuple[tuple[str, int], ...]):
        super().__init__(in_features, sum(rows for _, rows in parts), bias=False)
        self.fused_parts = parts  # ((name, rows), ...); kept by model.memory.fp8 when it converts the layer


def part_rows(fused_parts: tuple[tuple[str, int], ...]) -> dict[str, slice]:
    """Part name -> its slice of the fused output rows."""
    slices, start = {}, 0
    for name, rows in fused_parts:
        slices[name] = slice(start, start + rows)
        start += rows
    return slices


def fuse_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers-named weights -> the names of the fused model: parts concatenated by rows.

    Keys of modules that have no fused form pass through unchanged; a block missing one of the
    parts is left unfused, so the strict loader then names exactly what is missing.
    """
    out = dict(state_dict)
    for key in state_dict:
        for fused, parts in FUSED_NAMES.items():
            suffix = f".{parts[0]}.weight"
            if not key.endswith(suffix):
                continue
            prefix = key[: -len(suffix)]
            names = [f"{prefix}.{part}.weight" for part in parts]
            if all(name in out for name in names):
                out[f"{prefix}.{fused}.weight"] = torch.cat([out.pop(name) for name in names])
    return out
