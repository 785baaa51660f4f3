"""Pixel pre/post-processing: reference image -> VAE input tensor, VAE output -> PIL images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image; transparent pixels are composited onto white (not black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width x height (aspect kept, Lanczos), then crop the centre to exactly that.

    Nothing is stretched and no borders are added; an image that already has the size is returned as is.
    """
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    resized_w = max(width, round(image.width * scale))
    resized_h = max(height, round(image.height * scale))
    resized = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
    left = (resized_w - width) // 2
    top = (resized_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def reference_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Reference image -> fp32 [1, 3, height, width] in [-1, 1] (the VAE encoder's input range)."""
    pixels = np.asarray(cover_crop(to_rgb(image), width, height), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return tensor * 2.0 - 1.0


def to_pil_images(decoded: torch.Tensor) -> list[Image.Image]:
    """VAE output [B, 3, H, W] in about [-1, 1] -> 8-bit RGB images (x/2 + 0.5, clamped, rounded)."""
    pixels = (decoded.float() / 2 + 0.5).clamp(0, 1)
    array = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(item) for item in array]
