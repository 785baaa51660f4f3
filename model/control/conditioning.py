"""The ControlNet's input latents: the control image, and for 2.x the inpainting mask and masked reference.

Layout of the 33 channels of a 2.x ControlNet (VideoX-Fun, diffusers' ZImageControlNetInpaintPipeline):
16 latents of the control image, 1 keep-mask (1 = keep the reference, 0 = repaint, at latent size),
16 latents of the reference with the repainted pixels set to 0 (mid-grey). A part that is absent is
zeros (no control image: zero control latents; no mask: keep-mask and masked image zero), which is
what VideoX-Fun feeds and what diffusers' zero padding of plain control amounts to.
"""

from __future__ import annotations

import torch

from model.network.controlnet import CONTROL_CHANNELS, INPAINT_CHANNELS


def masked_pixels(reference: torch.Tensor, repaint: torch.Tensor) -> torch.Tensor:
    """Reference pixels [1, 3, H, W] in [-1, 1] with the repainted region set to 0."""
    return reference * (repaint < 0.5)


def control_context(in_channels: int, latent_shape: tuple[int, int], device: torch.device,
                    control: torch.Tensor | None, keep: torch.Tensor | None = None,
                    masked: torch.Tensor | None = None) -> torch.Tensor:
    """ControlNet input [in_channels, 1, h, w] (fp32) from latents [1, 16, h, w] and a keep-mask [1, 1, h, w]."""
    def part(tensor: torch.Tensor | None, channels: int) -> torch.Tensor:
        if tensor is None:
            return torch.zeros((1, channels, *latent_shape), device=device)
        return tensor.to(device=device, dtype=torch.float32)

    parts = [part(control, CONTROL_CHANNELS)]
    if in_channels == INPAINT_CHANNELS:
        parts += [part(keep, 1), part(masked, CONTROL_CHANNELS)]
    return torch.cat(parts, dim=1)[0].unsqueeze(1)  # (C, F=1, h, w)
