"""Banded (tiled) VAE execution: bounded device memory, same result as running the whole image at once.

Above the mid block (decoder) or below it (encoder) every op is local to a few rows, except GroupNorm,
which needs statistics of the whole feature map. So feature maps are kept whole in host memory and each
op runs on the device band by band: 3x3 convs get a one-row halo, up/down-samplers map output rows to
the input rows they read, and every GroupNorm uses whole-map statistics that were accumulated while the
previous op produced its bands. The mid block (with its global attention) runs at latent resolution,
where whole feature maps are small. There are no seams and nothing to blend.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from model.network.vae import Decoder, Encoder, ResnetBlock

logger = logging.getLogger(__name__)

HALO = 1  # rows of context a 3x3 convolution needs on each side


class GroupStats:
    """Per-(sample, group) mean and variance of a whole feature map, merged band by band (Chan et al.)."""

    def __init__(self, groups: int):
        self.groups = groups
        self.count = 0
        self.mean = self.m2 = None  # fp64 [B, G]

    def add(self, band: torch.Tensor) -> None:
        grouped = band.reshape(band.shape[0], self.groups, -1)
        var, mean = torch.var_mean(grouped.float(), dim=-1, correction=0)
        n, mean, m2 = grouped.shape[-1], mean.double(), var.double() * grouped.shape[-1]
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def normalize(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        """`norm(x)` for a band x of the map these statistics describe, as one fused multiply-add."""
        b, c = x.shape[:2]
        rstd = torch.rsqrt(self.m2 / self.count + norm.eps)  # [B, G]
        per_channel = c // self.groups
        scale = rstd.repeat_interleave(per_channel, dim=1) * norm.weight.double()  # [B, C]
        shift = norm.bias.double() - self.mean.repeat_interleave(per_channel, dim=1) * scale
        return torch.addcmul(shift.to(x.dtype).view(b, c, 1, 1), x, scale.to(x.dtype).view(b, c, 1, 1))


def _input_window(out_start: int, out_stop: int, height: int, scale: float) -> tuple[int, int, int]:
    """Input rows [lo, hi) an op needs for output rows [out_start, out_stop), and where out_start lands
    in the op's output for that input. scale = output rows per input row (1, 2 or 0.5)."""
    if scale == 0.5:  # pad (0,1,0,1) + 3x3 stride-2 conv: output row o reads input rows 2o..2o+2
        return 2 * out_start, min(height, 2 * out_stop + 1), 0
    if scale == 2:  # nearest x2 then 3x3 conv: output rows 2i, 2i+1 come from input row i (+ halo)
        lo = max(0, out_start // 2 - HALO)
        return lo, min(height, (out_stop + 1) // 2 + HALO), out_start - 2 * lo
    lo = max(0, out_start - HALO)
    return lo, min(height, out_stop + HALO), out_start - lo


class BandRunner:
    """Applies row-local ops band by band on `device`, keeping whole maps on the host."""

    def __init__(self, groups: int, band_pixels: int, device: torch.device):
        self.groups = groups
        self.band_pixels = band_pixels
        self.device = device

    def bands(self, fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor],
              scale: float = 1) -> tuple[torch.Tensor, GroupStats]:
        """fn over all output rows; returns the whole output (host) and its GroupNorm statistics."""
        height = inputs[0].shape[-2]
        out_height = int(height * scale)
        out_width = int(inputs[0].shape[-1] * scale)
        rows = max(2, self.band_pixels // out_width) // 2 * 2  # even, so x2 up-sampling splits cleanly
        out, stats = None, GroupStats(self.groups)
        for start in range(0, out_height, rows):
            stop = min(start + rows, out_height)
            lo, hi, offset = _input_window(start, stop, height, scale)
            band = fn(*(t[..., lo:hi, :].to(self.device) for t in inputs))[..., offset:offset + stop - start, :]
            if out is None:
                out = torch.empty(*band.shape[:2], out_height, band.shape[-1], dtype=band.dtype)
            out[..., start:stop, :] = band.cpu()
            if band.shape[1] % self.groups == 0:
                stats.add(band)
        return out, stats

    def resnet(self, block: "ResnetBlock", x: torch.Tensor, x_stats: GroupStats) -> tuple[torch.Tensor, GroupStats]:
        h, h_stats = self.bands(lambda xb: block.conv1(F.silu(x_stats.normalize(block.norm1, xb))), [x])

        def second(hb: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
            skip = block.conv_shortcut(xb) if block.conv_shortcut is not None else xb
            return skip + block.conv2(F.silu(h_stats.normalize(block.norm2, hb)))

        return self.bands(second, [h, x])


def decode_in_bands(decoder: "Decoder", z: torch.Tensor, groups: int, band_pixels: int) -> torch.Tensor:
    """decoder(z), with everything above the mid block run band by band (result on the host)."""
    runner = BandRunner(groups, band_pixels, decoder.conv_in.weight.device)
    x = decoder.mid_block(decoder.conv_in(z.to(runner.device)))  # latent resolution: small
    stats = GroupStats(groups)
    stats.add(x)
    x = x.cpu()
    for level in decoder.up_blocks:
        for block in level.resnets:
            x, stats = runner.resnet(block, x, stats)
        if level.upsamplers is not None:
            x, stats = runner.bands(level.upsamplers[0], [x], scale=2)
    norm = decoder.conv_norm_out
    out, _ = runner.bands(lambda xb: decoder.conv_out(F.silu(stats.normalize(norm, xb))), [x])
    return out


def encode_in_bands(encoder: "Encoder", images: torch.Tensor, groups: int, band_pixels: int) -> torch.Tensor:
    """encoder(images), with everything below the mid block run band by band (result on the device)."""
    runner = BandRunner(groups, band_pixels, encoder.conv_in.weight.device)
    x, stats = runner.bands(encoder.conv_in, [images.cpu()])
    for level in encoder.down_blocks:
        for block in level.resnets:
            x, stats = runner.resnet(block, x, stats)
        if level.downsamplers is not None:
            x, stats = runner.bands(level.downsamplers[0], [x], scale=0.5)
    x = encoder.mid_block(x.to(runner.device))  # latent resolution: small
    return encoder.conv_out(F.silu(encoder.conv_norm_out(x)))
