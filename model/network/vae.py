"""Flux VAE (16-channel AutoencoderKL): encoder, decoder, latent normalisation and tiled decoding.

Module names follow the diffusers checkpoint keys (`decoder.up_blocks.0.resnets.1.conv1.weight`, ...), so the
Hugging Face `vae/` folder loads without renaming; the BFL `ae.safetensors` naming is a rename table in
model/loading/vae.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import CheckpointError
from model.network.vae_tiling import decode_in_bands, encode_in_bands

logger = logging.getLogger(__name__)

GROUP_NORM_EPS = 1e-6
# Tiled decoding: each band holds at most (DEFAULT_TILE * 8)^2 = 768^2 output pixels on the device.
DEFAULT_TILE = 96


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a Flux-style AutoencoderKL (values from vae/config.json or inferred from shapes)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159

    @classmethod
    def from_json(cls, path: str | Path) -> "VAEConfig":
        """Read a diffusers AutoencoderKL config.json, refusing options this implementation does not have."""
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        unsupported = {
            "use_quant_conv": True,
            "use_post_quant_conv": True,
            "mid_block_add_attention": False,
        }
        for key, bad in unsupported.items():
            if raw.get(key, not bad) == bad:
                raise CheckpointError(f"{path}: {key}={bad} is not a Flux VAE (expected {not bad})")
        if raw.get("act_fn", "silu") != "silu":
            raise CheckpointError(f"{path}: act_fn={raw['act_fn']!r}; the Flux VAE uses 'silu'")
        try:
            return cls(
                in_channels=int(raw["in_channels"]),
                out_channels=int(raw["out_channels"]),
                latent_channels=int(raw["latent_channels"]),
                block_out_channels=tuple(int(c) for c in raw["block_out_channels"]),
                layers_per_block=int(raw["layers_per_block"]),
                norm_num_groups=int(raw["norm_num_groups"]),
                scaling_factor=float(raw["scaling_factor"]),
                shift_factor=float(raw["shift_factor"]),
            )
        except KeyError as exc:
            raise CheckpointError(f"{path}: missing VAE config field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed VAE config ({exc})") from None

    def to_diffusers_json(self) -> dict:
        """The config.json that diffusers' AutoencoderKL reads for this architecture."""
        levels = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "act_fn": "silu",
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
            "mid_block_add_attention": True,
            "force_upcast": True,
        }


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1-projected where channels change) skip."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on fresh intermediates: same values, fewer full-resolution buffers (memory and time).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.conv_shortcut(x) if self.conv_shortcut is not None else x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all spatial positions (the VAE mid block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class MidBlock(nn.Module):
    """ResNet -> attention -> ResNet at the lowest resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom by one) then a stride-2 3x3 conv, as the Flux VAE was trained."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderLevel(nn.Module):
    """ResNets at one resolution, then an optional downsampler."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(depth)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class DecoderLevel(nn.Module):
    """ResNets at one resolution, then an optional upsampler."""

    def __init__(self, in_ch: int, out_ch: int, depth: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(depth)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    """Image [B,3,H,W] in [-1,1] -> latent moments [B,2*C,H/8,W/8] (mean and log-variance)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderLevel(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, groups, i < len(chans) - 1)
            for i in range(len(chans))
        )
        self.mid_block = MidBlock(chans[-1], groups)
        self.conv_norm_out = _group_norm(chans[-1], groups)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = level(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latent [B,C,h,w] -> image [B,3,8h,8w] in about [-1,1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups)
        self.up_blocks = nn.ModuleList(
            DecoderLevel(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, groups, i < len(chans) - 1)
            for i in range(len(chans))
        )
        self.conv_norm_out = _group_norm(chans[-1], groups)
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            x = level(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class FluxVAE(nn.Module):
    """The 16-channel Flux autoencoder with Z-Image's latent normalisation."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> the space the transformer works in: (z - shift) * scale."""
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize(self, z_norm: torch.Tensor) -> torch.Tensor:
        """Transformer latent -> VAE latent: z / scale + shift."""
        return z_norm / self.config.scaling_factor + self.config.shift_factor

    def encode_moments(self, images: torch.Tensor, tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1,1] -> (mean, std) of the diagonal Gaussian posterior, VAE latent space.

        With `tile`, the full-resolution part runs in bands of at most (tile*8)^2 pixels (same result)."""
        images = images.to(self.dtype)
        if tile is None:
            moments = self.encoder(images)
        else:
            band_pixels = (tile * self.downscale) ** 2
            moments = encode_in_bands(self.encoder, images, self.config.norm_num_groups, band_pixels)
        mean, logvar = moments.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean, std

    def encode(self, images: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Images in [-1,1] -> normalised latents, using the posterior mode (mean): deterministic."""
        mean, _ = self.encode_moments(images, tile)
        return self.normalize(mean)

    def decode(self, z_norm: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in about [-1,1] (fp32), decoded in one piece."""
        return self.decoder(self.denormalize(z_norm.float()).to(self.dtype)).float()

    def decode_tiled(self, z_norm: torch.Tensor, tile: int = DEFAULT_TILE) -> torch.Tensor:
        """`decode`, run in bands of at most (tile*8)^2 output pixels (model.network.vae_tiling): device memory
        stays bounded and the result equals the untiled decode up to float rounding. The image is
        assembled and returned on the CPU, where it is going anyway, so it never has to fit the device."""
        z = self.denormalize(z_norm.float()).to(self.dtype)
        band_pixels = (tile * self.downscale) ** 2
        return decode_in_bands(self.decoder, z, self.config.norm_num_groups, band_pixels).float()

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype
