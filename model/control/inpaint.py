"""Inpainting masks and the per-step latent blend of diffusers' ZImageInpaintPipeline.

A mask is white where the image is repainted. It is cut to the output size exactly as the reference
(model.images.cover_crop), binarised at half intensity (>= 128 repaints, as diffusers' mask
processor) and resized to the latent grid by nearest neighbour. After every sampling step the kept
region is replaced by the reference's clean latents noised to the sigma just reached, with the same
noise the run started from; the last step (sigma 0) leaves the clean reference latents there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.images import cover_crop
from model.sampler import noise_latents


def pixel_mask(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """Binary repaint mask [1, 1, height, width] (1 = repaint) in float32."""
    gray = np.asarray(cover_crop(mask.convert("L"), width, height), dtype=np.uint8)
    return torch.from_numpy(gray >= 128).to(torch.float32)[None, None]


def latent_mask(repaint: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """A pixel mask [1, 1, H, W] nearest-resized to the latent grid [1, 1, h, w]."""
    return F.interpolate(repaint, size=(latent_height, latent_width), mode="nearest")


@dataclass(frozen=True)
class LatentBlend:
    """After-step hook of the sampler: keep the reference outside the mask at every noise level."""

    repaint: torch.Tensor  # [1, 1, h, w]: 1 = generated, 0 = the reference's
    clean: torch.Tensor  # [1, 16, h, w] reference latents
    noise: torch.Tensor  # [B, 16, h, w] the noise the run started from

    def __call__(self, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        reference = noise_latents(self.clean, self.noise, sigma.to(latents.device))
        return (1 - self.repaint) * reference + self.repaint * latents

    def split(self, chunk: int) -> list["LatentBlend"]:
        """One blend per batch chunk of `chunk` images (the noise is per image)."""
        return [LatentBlend(self.repaint, self.clean, part) for part in self.noise.split(chunk)]
