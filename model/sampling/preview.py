"""Cheap step previews: the model's current clean-image estimate through a linear latent -> RGB map.

No VAE: each of the 16 Flux latent channels contributes a fixed RGB colour, plus a bias. The factors are
the published ones for the FLUX.1 VAE that Z-Image uses, from ComfyUI's comfy/latent_formats.py, class
Flux (`latent_rgb_factors`, `latent_rgb_factors_bias`); ComfyUI applies them to the normalised ("model
space") latents the sampler works on and maps [-1, 1] to [0, 255], as done here. The image has the latent
resolution (1/8 of the output per side), at most `max_side` pixels per side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from model.sampling.solvers import clean_estimate

PREVIEW_MAX_SIDE = 256

# Rows: latent channels 0..15; columns: R, G, B.
FLUX_LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def latent_rgb(latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B, 16, h, w] -> uint8 RGB [B, h, w, 3] on the latents' device."""
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
    rgb = F.linear(latents.float().movedim(1, -1), factors.T, bias)
    return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)


def preview_images(latents: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> list[Image.Image]:
    """One small RGB image per sample of `latents` (normalised, [B, 16, h, w])."""
    height, width = latents.shape[-2:]
    if max(height, width) > max_side:
        # Area averaging commutes with the affine map: shrinking first is the same picture (up to the clamp)
        # for a fraction of the work.
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        latents = F.interpolate(latents.float(), size=size, mode="area")
    pixels = latent_rgb(latents).cpu().numpy()
    return [Image.fromarray(item) for item in pixels]


def step_preview(x: torch.Tensor, flow: torch.Tensor, sigma: float,
                 max_side: int = PREVIEW_MAX_SIDE) -> list[Image.Image]:
    """Preview of the clean estimate x0 = x - sigma * flow made at one step (x: the latents that step saw)."""
    return preview_images(clean_estimate(x, flow, sigma), max_side)
