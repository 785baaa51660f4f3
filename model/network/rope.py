"""3-axis rotary position embedding (RoPE): pure functions, no module state.

Tables are computed on demand from integer position ids and never registered as buffers, because
`Module.to(bfloat16)` would silently destroy their precision.
A table is a complex64 tensor (..., head_dim/2): one unit phasor per adjacent pair of q/k values,
built and applied with the same complex arithmetic as the reference, so fp32 results agree to
rounding.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch


def rope_table(position_ids: torch.Tensor, axes_dims: Sequence[int], theta: float) -> torch.Tensor:
    """Unit phasors for integer positions (N, n_axes) -> complex64 (N, sum(axes_dims)/2).

    Axis a with width d_a rotates pair j by p_a / theta^(2j/d_a). Angles are formed in float64 and
    rounded to float32 before cos/sin, exactly as the reference precomputes its tables.
    """
    if position_ids.shape[-1] != len(axes_dims):
        raise ValueError(f"position ids have {position_ids.shape[-1]} axes, RoPE expects {len(axes_dims)}")
    angles = []
    for axis, dim in enumerate(axes_dims):
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=position_ids.device) / dim))
        angles.append(position_ids[:, axis].to(torch.float64)[:, None] * inv_freq[None, :])  # (N, d_a/2)
    angle = torch.cat(angles, dim=-1).to(torch.float32)  # (N, head_dim/2)
    return torch.polar(torch.ones_like(angle), angle)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of q or k in float32; returns x's dtype.

    x: (B, S, H, head_dim); table: complex64 (B, S, head_dim/2), broadcast over heads. Equals
    out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i] sin + x[2i+1] cos.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, S, H, head_dim/2)
    rotated = torch.view_as_real(pairs * table.unsqueeze(2))  # (B, S, H, head_dim/2, 2)
    return rotated.flatten(-2).to(x.dtype)


def rope_pairs(table: torch.Tensor) -> torch.Tensor:
    """A complex table as real float32 (..., head_dim/2, 2) [cos, sin] pairs: a view, no copy.

    The transformer's blocks take this form, because compilers (inductor) do not generate code for
    complex tensors; the complex table stays the readable definition.
    """
    return torch.view_as_real(table)


def apply_rope_pairs(x32: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """apply_rope in real arithmetic on float32 q or k: (B, S, H, head_dim) with pairs (B, S, head_dim/2, 2).

    The same products and sums as the complex multiplication, so fp32 results agree to rounding.
    """
    x = x32.unflatten(-1, (-1, 2))  # (B, S, H, head_dim/2, 2)
    cos, sin = pairs[..., 0].unsqueeze(2), pairs[..., 1].unsqueeze(2)  # broadcast over heads
    even, odd = x[..., 0], x[..., 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def caption_position_ids(padded_length: int, device: torch.device | None = None) -> torch.Tensor:
    """Caption tokens, pad tokens included, sit at consecutive positions (1 + k, 0, 0)."""
    ids = torch.zeros(padded_length, 3, dtype=torch.int64, device=device)
    ids[:, 0] = torch.arange(1, padded_length + 1, device=device)
    return ids


def image_position_ids(grid: tuple[int, int, int], caption_length: int, pad: int,
                       device: torch.device | None = None) -> torch.Tensor:
    """Image tokens at (caption_length + 1 + f, h, w) in raster order; pad tokens at (0, 0, 0)."""
    frames, height, width = grid
    f, h, w = torch.meshgrid(
        torch.arange(caption_length + 1, caption_length + 1 + frames, device=device),
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij",
    )
    ids = torch.stack([f, h, w], dim=-1).reshape(-1, 3)  # (F*H*W, 3)
    return torch.cat([ids, torch.zeros(pad, 3, dtype=ids.dtype, device=device)])


@functools.lru_cache(maxsize=16)
def cached_image_rope(grid: tuple[int, int, int], caption_length: int, pad: int,
                      axes_dims: tuple[int, ...], theta: float, device: torch.device) -> torch.Tensor:
    """Image RoPE table for one latent shape and caption length; the same on every sampling step.

    Cached because a request calls the transformer once per step with identical shapes; entries
    are small (tokens x head_dim x 4 bytes) and are never modified in place.
    """
    return rope_table(image_position_ids(grid, caption_length, pad, device), axes_dims, theta)


def check_positions_fit(max_positions: Sequence[int], axes_lens: Sequence[int]) -> None:
    """The reference indexes tables of length axes_lens; larger positions are outside the model."""
    for axis, (needed, limit) in enumerate(zip(max_positions, axes_lens)):
        if needed >= limit:
            raise ValueError(f"RoPE axis {axis} needs position {needed}, but the model supports positions "
                             f"below {limit} (axes_lens); use a smaller image or a shorter prompt")
