"""The Z-Image S3-DiT (single-stream diffusion transformer).

Math as in Tongyi-MAI/Z-Image `src/zimage/transformer.py` and diffusers' `transformer_z_image.py`.

Attribute names equal the diffusers checkpoint keys, so the Hugging Face layout loads without
renaming. Call convention as diffusers: forward(x: list of (C, F, H, W), t: (B,) in [0, 1],
cap_feats: list of (L_i, cap_feat_dim)) -> list of (C, F, H, W), the raw velocity x0 - noise.
The caption half (embedding + context refiner) does not depend on t, so `prepare_context` runs it
once per request and `forward(x, t, context=...)` reuses it on every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from model.network.attention import attention
from model.network.config import TransformerConfig
from model.network.fused import GATE_UP_PARTS, QKV_PARTS, FusedLinear
from model.network.rope import (apply_rope_pairs, cached_image_rope, caption_position_ids, check_positions_fit,
                                rope_pairs, rope_table)

SEQ_MULTIPLE = 32  # image and caption sequences are each padded to a multiple of this
FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10000.0


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize32(x.float()).to(x.dtype)

    def normalize32(self, x32: torch.Tensor) -> torch.Tensor:
        """The normalisation on a float32 tensor, left in float32 (for fusing with what follows)."""
        return x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases; `fused` computes w1 and w3 as one matmul (w13)."""

    def __init__(self, dim: int, hidden_dim: int, fused: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        if fused:
            self.w13 = FusedLinear(dim, tuple((name, hidden_dim) for name in GATE_UP_PARTS))
        else:
            self.w1 = nn.Linear(dim, hidden_dim, bias=False)
            self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "w13"):
            gate, up = self.w13(x).split(self.hidden_dim, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


class Attention(nn.Module):
    """Self-attention with per-head RMS q/k norms and 3-axis RoPE.

    `fused`: q/k/v as one matmul (to_qkv), and each q/k norm applied together with RoPE in float32
    (one rounding to the model dtype instead of two; the same values in float32).
    """

    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        dim, self.n_heads = config.dim, config.n_heads
        self.fused = fused
        if fused:
            self.to_qkv = FusedLinear(dim, tuple((name, dim) for name in QKV_PARTS))
        else:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_k = nn.Linear(dim, dim, bias=False)
            self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])  # key "to_out.0", as diffusers
        self.norm_q = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """rope: float32 (B, S, head_dim/2, 2) cos/sin pairs (model.network.rope.rope_pairs)."""
        if self.fused:
            q, k, v = self.to_qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(-3)  # (B, S, H, head_dim)
            q, k = (self._norm_rope32(norm, part.float(), rope).to(x.dtype)
                    for norm, part in ((self.norm_q, q), (self.norm_k, k)))
        else:
            q = self.norm_q(self.to_q(x).unflatten(-1, (self.n_heads, -1)))  # (B, S, H, head_dim)
            k = self.norm_k(self.to_k(x).unflatten(-1, (self.n_heads, -1)))
            v = self.to_v(x).unflatten(-1, (self.n_heads, -1))
            q, k = (apply_rope_pairs(part.float(), rope).to(x.dtype) for part in (q, k))
        out = attention(q, k, v, mask)  # (B, S, H, head_dim)
        return self.to_out[0](out.flatten(-2).to(x.dtype))  # (B, S, D)

    @staticmethod
    def _norm_rope32(norm: nn.Module, x32: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        normed = norm.normalize32(x32) if isinstance(norm, RMSNorm) else x32
        return apply_rope_pairs(normed, rope)


class TransformerBlock(nn.Module):
    """Sandwich-norm block; with modulation, the timestep scales inputs and tanh-gates outputs."""

    def __init__(self, config: TransformerConfig, modulation: bool, fused: bool = False):
        super().__init__()
        dim = config.dim
        self.attention = Attention(config, fused)
        self.feed_forward = FeedForward(dim, config.ffn_dim, fused)
        self.attention_norm1 = RMSNorm(dim, config.norm_eps)
        self.attention_norm2 = RMSNorm(dim, config.norm_eps)
        self.ffn_norm1 = RMSNorm(dim, config.norm_eps)
        self.ffn_norm2 = RMSNorm(dim, config.norm_eps)
        self.modulation = modulation
        if modulation:  # a bare Linear (no SiLU before it), kept in a Sequential for the ".0." key
            self.adaLN_modulation = nn.Sequential(nn.Linear(config.adaln_dim, 4 * dim, bias=True))

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                adaln: torch.Tensor | None = None) -> torch.Tensor:
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rope, mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        mod = self.adaLN_modulation(adaln).unsqueeze(1)  # (B, 1, 4D), broadcast over tokens
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4, dim=-1)
        attn_out = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), rope, mask)
        x = x + gate_msa.tanh() * self.attention_norm2(attn_out)
        ffn_out = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp))
        return x + gate_mlp.tanh() * self.ffn_norm2(ffn_out)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (cos first, float32) of t * t_scale, then a 2-layer SiLU MLP."""

    def __init__(self, out_dim: int, hidden_dim: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_dim, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_dim, out_dim, bias=True))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = FREQUENCY_EMBEDDING_SIZE // 2
        freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None, :]  # (B, 128)
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 256)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    """Affine-free LayerNorm scaled by (1 + Linear(SiLU(adaln))), then projection to patch values."""

    def __init__(self, dim: int, adaln_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim, bias=True))

    def forward(self, x: torch.Tensor, adaln: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=1e-6).to(x.dtype)
        scale = 1.0 + self.adaLN_modulation(adaln).unsqueeze(1)  # (B, 1, D)
        return self.linear(normed * scale)


@dataclass
class CaptionContext:
    """Refined caption tokens of a batch; independent of t, so reused on every sampling step."""

    tokens: torch.Tensor  # (B, Lc_max, D) after cap_embedder + context_refiner
    rope: torch.Tensor  # float32 cos/sin pairs (B, Lc_max, head_dim/2, 2)
    lengths: list[int]  # Lc_i: caption length padded to a multiple of 32 (pad tokens included)
    # (latent shapes, patch sizes) -> StepGeometry; filled by the first step, reused by the others
    geometry: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StepGeometry:
    """What a step needs that follows from the shapes alone, so it is built once per request.

    Keeping it out of the step means the step itself is only fixed-shape tensor work: no position
    tables, no mask built from host data, nothing for a compiler to break its graph on.
    """

    counts: tuple[int, ...]  # image tokens per sample, before padding to a multiple of 32
    caption_lengths: tuple[int, ...]
    image_rope: torch.Tensor  # float32 pairs (B, Ni_max, head_dim/2, 2)
    image_mask: torch.Tensor | None  # bool (B, Ni_max), None when every row is full
    unified_rope: torch.Tensor  # float32 pairs (B, S, head_dim/2, 2)
    unified_mask: torch.Tensor | None  # bool (B, S)
    uniform: bool  # every sample has the same image and caption length (checked here, not in the step)


def _pad_count(length: int) -> int:
    return (-length) % SEQ_MULTIPLE


def _pad_rows(rows: torch.Tensor) -> torch.Tensor:
    """Repeat the last row up to a multiple of 32, as the reference does before embedding.

    The copies are replaced by a pad token after embedding; they exist only so the embedding
    matmul has the reference's shape and hence its exact rounding.
    """
    return torch.cat([rows, rows[-1:].expand(_pad_count(len(rows)), -1)])


def _replace_pad_rows(embedded: torch.Tensor, real: int, pad_token: torch.Tensor) -> torch.Tensor:
    return torch.cat([embedded[:real], pad_token.expand(len(embedded) - real, -1)])


def patchify(latent: torch.Tensor, patch: int, f_patch: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(C, F, H, W) -> (N, pf*p*p*C) tokens in (f, h, w) raster order, features (pf, ph, pw, c)."""
    channels, frames, height, width = latent.shape
    grid = (frames // f_patch, height // patch, width // patch)
    tokens = latent.reshape(channels, grid[0], f_patch, grid[1], patch, grid[2], patch)
    tokens = tokens.permute(1, 3, 5, 2, 4, 6, 0)  # (F', H', W', pf, ph, pw, C)
    return tokens.reshape(grid[0] * grid[1] * grid[2], -1), grid


class ControlHints(Protocol):
    """Per-layer additions from a ControlNet: {block index: tensor shaped like the stream}."""

    def refiner_hints(self, image: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                      adaln: torch.Tensor) -> dict[int, torch.Tensor]: ...

    def layer_hints(self, unified: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                    adaln: torch.Tensor) -> dict[int, torch.Tensor]: ...


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample rows (L_i, ...) zero-padded into one batch (B, L_max, ...)."""
    return pad_sequence(rows, batch_first=True)


def _key_mask(lengths: list[int], device: torch.device) -> torch.Tensor | None:
    """bool (B, L_max), True for the first L_i positions; None when all lengths are equal."""
    if len(set(lengths)) == 1:
        return None
    positions = torch.arange(max(lengths))
    # Built on the CPU and copied without blocking, once per request: no host-device sync in a step.
    return (positions[None, :] < torch.tensor(lengths)[:, None]).to(device, non_blocking=True)


class ZImageTransformer(nn.Module):
    """Z-Image S3-DiT: noise refiner, context refiner, unified image+caption blocks, final layer.

    `fused=True` builds the blocks with fused projections (to_qkv, w13; model.network.fused) and
    fused q/k norm + RoPE; load it with model.loading.transformer.load_transformer(fuse=True).
    """

    def __init__(self, config: TransformerConfig, fused: bool = False):
        super().__init__()
        self.config = config
        self.fused = fused
        dim = config.dim
        patches = list(zip(config.all_patch_size, config.all_f_patch_size))
        self.all_x_embedder = nn.ModuleDict({
            f"{p}-{f}": nn.Linear(f * p * p * config.in_channels, dim, bias=True) for p, f in patches})
        self.all_final_layer = nn.ModuleDict({
            f"{p}-{f}": FinalLayer(dim, config.adaln_dim, p * p * f * config.in_channels) for p, f in patches})
        self.noise_refiner = nn.ModuleList(
            [TransformerBlock(config, True, fused) for _ in range(config.n_refiner_layers)])
        self.context_refiner = nn.ModuleList(
            [TransformerBlock(config, False, fused) for _ in range(config.n_refiner_layers)])
        self.t_embedder = TimestepEmbedder(config.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(config.cap_feat_dim, config.norm_eps),
                                          nn.Linear(config.cap_feat_dim, dim, bias=True))
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.layers = nn.ModuleList([TransformerBlock(config, True, fused) for _ in range(config.n_layers)])

    @property
    def dtype(self) -> torch.dtype:
        return self.x_pad_token.dtype

    def prepare_context(self, cap_feats: list[torch.Tensor]) -> CaptionContext:
        """Embed and refine the captions: (L_i, cap_feat_dim) each -> a CaptionContext."""
        cfg, device = self.config, self.x_pad_token.device
        if any(c.ndim != 2 or c.shape[1] != cfg.cap_feat_dim or len(c) == 0 for c in cap_feats):
            raise ValueError(f"cap_feats must be non-empty (L_i, {cfg.cap_feat_dim}) tensors, got "
                             f"{[tuple(c.shape) for c in cap_feats]}")
        lengths = [len(c) + _pad_count(len(c)) for c in cap_feats]
        check_positions_fit([max(lengths), 0, 0], cfg.axes_lens)
        feats = torch.cat([_pad_rows(c) for c in cap_feats]).to(device=device, dtype=self.dtype)
        embedded = self.cap_embedder(feats).split(lengths)  # (Lc_i, D) each
        tokens = _stack([_replace_pad_rows(e, len(c), self.cap_pad_token) for e, c in zip(embedded, cap_feats)])
        mask = _key_mask(lengths, device)
        positions = caption_position_ids(max(lengths), device)  # the same for every row
        rope = rope_pairs(rope_table(positions, cfg.axes_dims, cfg.rope_theta)).expand(len(lengths), -1, -1, -1)
        for block in self.context_refiner:
            tokens = block(tokens, rope, mask)
        return CaptionContext(tokens=tokens, rope=rope, lengths=lengths)

    def forward(self, x: list[torch.Tensor], t: torch.Tensor, cap_feats: list[torch.Tensor] | None = None,
                context: CaptionContext | None = None, patch_size: int = 2,
                f_patch_size: int = 1, control: ControlHints | None = None) -> list[torch.Tensor]:
        """Velocity for each latent in `x`; pass `cap_feats` or a `context` from prepare_context.

        `control` (a ControlNet branch, model.network.controlnet) adds its hints to the stream right
        after the noise-refiner and main layers it names.
        """
        if context is None:
            if cap_feats is None:
                raise ValueError("pass cap_feats or a context from prepare_context")
            context = self.prepare_context(cap_feats)
        key = f"{patch_size}-{f_patch_size}"
        if key not in self.all_x_embedder:
            raise ValueError(f"patch size {key} not in this model ({list(self.all_x_embedder)})")
        t = torch.as_tensor(t, device=self.x_pad_token.device).reshape(-1)
        if len(context.lengths) != len(x) or t.numel() not in (1, len(x)):
            raise ValueError(f"{len(x)} latents but {len(context.lengths)} captions and {t.numel()} timesteps")
        geometry = self._geometry([tuple(latent.shape) for latent in x], context, patch_size, f_patch_size)
        return self._step(x, t.expand(len(x)), context.tokens, geometry, patch_size, f_patch_size, control)

    def _step(self, x: list[torch.Tensor], t: torch.Tensor, caption_tokens: torch.Tensor, geometry: StepGeometry,
              patch: int, f_patch: int, control: ControlHints | None = None) -> list[torch.Tensor]:
        """One transformer call on fixed shapes: the part model.runtime.compile compiles as one graph."""
        adaln = self.t_embedder(t.float() * self.config.t_scale).to(self.dtype)  # (B, adaln_dim)

        image = self._embed_images(x, geometry.counts, patch, f_patch)
        hints = {} if control is None else control.refiner_hints(image, geometry.image_rope, geometry.image_mask,
                                                                 adaln)
        for i, block in enumerate(self.noise_refiner):
            image = block(image, geometry.image_rope, geometry.image_mask, adaln)
            if i in hints:
                image = image + hints[i]

        unified = self._unify(image, caption_tokens, geometry)
        hints = {} if control is None else control.layer_hints(unified, geometry.unified_rope,
                                                               geometry.unified_mask, adaln)
        for i, block in enumerate(self.layers):
            unified = block(unified, geometry.unified_rope, geometry.unified_mask, adaln)
            if i in hints:
                unified = unified + hints[i]

        out = self.all_final_layer[f"{patch}-{f_patch}"](unified, adaln)  # (B, S, p*p*pf*C)
        return [self._unpatchify(out[i, :n], latent.shape, patch, f_patch)
                for i, (n, latent) in enumerate(zip(geometry.counts, x))]

    def _geometry(self, shapes: list[tuple[int, ...]], context: CaptionContext, patch: int,
                  f_patch: int) -> StepGeometry:
        """The StepGeometry of these latent shapes with this context, built on the first step only."""
        cache_key = (tuple(shapes), patch, f_patch)
        if cache_key not in context.geometry:
            context.geometry[cache_key] = self._build_geometry(shapes, context, patch, f_patch)
        return context.geometry[cache_key]

    def _build_geometry(self, shapes: list[tuple[int, ...]], context: CaptionContext, patch: int,
                        f_patch: int) -> StepGeometry:
        """RoPE tables and key masks: image tokens + pads first, then caption tokens + pads, per sample."""
        cfg, device = self.config, self.x_pad_token.device
        counts, image_ropes, unified_ropes = [], [], []
        for shape, cap_len, cap_rope in zip(shapes, context.lengths, context.rope):
            grid = self._grid(shape, patch, f_patch)
            check_positions_fit([cap_len + grid[0], grid[1] - 1, grid[2] - 1], cfg.axes_lens)
            count = grid[0] * grid[1] * grid[2]
            table = rope_pairs(cached_image_rope(grid, cap_len, _pad_count(count), cfg.axes_dims, cfg.rope_theta,
                                                 device))  # (N_i + pad, head_dim/2, 2)
            counts.append(count)
            image_ropes.append(table)
            unified_ropes.append(torch.cat([table, cap_rope[:cap_len]]))
        return StepGeometry(
            counts=tuple(counts), caption_lengths=tuple(context.lengths),
            image_rope=_stack(image_ropes), image_mask=_key_mask([len(r) for r in image_ropes], device),
            unified_rope=_stack(unified_ropes), unified_mask=_key_mask([len(r) for r in unified_ropes], device),
            uniform=len(set(counts)) == 1 and len(set(context.lengths)) == 1)

    @staticmethod
    def _unify(image: torch.Tensor, caption_tokens: torch.Tensor, geometry: StepGeometry) -> torch.Tensor:
        """Per sample, image first: [image tokens + pads, caption tokens + pads], then batched."""
        if geometry.uniform:
            # Rows of equal length (every engine batch without CFG): one concatenation, and no slice by a
            # length, so a compiled step can treat the caption length as a dynamic size.
            return torch.cat([image, caption_tokens], dim=1)
        rows = []
        for i, (count, cap_len) in enumerate(zip(geometry.counts, geometry.caption_lengths)):
            n = count + _pad_count(count)
            rows.append(torch.cat([image[i, :n], caption_tokens[i, :cap_len]]))  # (n + Lc_i, D)
        return _stack(rows)  # (B, S, D)

    def _embed_images(self, x: list[torch.Tensor], counts: tuple[int, ...], patch: int, f_patch: int) -> torch.Tensor:
        """Patchify, embed and pad each latent; pad rows become x_pad_token (masked only across the batch)."""
        device = self.x_pad_token.device
        padded = [_pad_rows(self._patchify(latent.to(device=device, dtype=self.dtype), patch, f_patch))
                  for latent in x]
        embedded = self.all_x_embedder[f"{patch}-{f_patch}"](torch.cat(padded)).split([len(p) for p in padded])
        return _stack([_replace_pad_rows(tokens, count, self.x_pad_token) for tokens, count in zip(embedded, counts)])

    def _grid(self, shape: tuple[int, ...], patch: int, f_patch: int) -> tuple[int, int, int]:
        """Token grid (F', H', W') of a (C, F, H, W) latent; a shape the patches do not tile is refused."""
        channels, frames, height, width = shape
        if channels != self.config.in_channels or frames % f_patch or height % patch or width % patch:
            raise ValueError(f"latent of shape {tuple(shape)} does not fit {self.config.in_channels} "
                             f"channels and patch {patch}x{patch}x{f_patch}")
        return frames // f_patch, height // patch, width // patch

    def _patchify(self, latent: torch.Tensor, patch: int, f_patch: int) -> torch.Tensor:
        """patchify() of one image latent, after checking it fits this model."""
        self._grid(tuple(latent.shape), patch, f_patch)
        return patchify(latent, patch, f_patch)[0]

    def _unpatchify(self, tokens: torch.Tensor, shape: torch.Size, patch: int, f_patch: int) -> torch.Tensor:
        """(N, pf*p*p*C) -> (C, F, H, W), the inverse of _patchify."""
        channels, frames, height, width = shape
        grid = (frames // f_patch, height // patch, width // patch)
        out = tokens.view(*grid, f_patch, patch, patch, channels)
        out = out.permute(6, 0, 3, 1, 4, 2, 5)  # (C, F', pf, H', ph, W', pw)
        return out.reshape(channels, frames, height, width)
