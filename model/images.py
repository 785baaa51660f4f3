"""Pixel pre/post-processing: reference image -> VAE input tensor, VAE output -> PIL images.

The crop geometry (crop_box, crop_ratio, MAX_CROP_RATIO) is torch-free: the app checks references with it
before queueing; reference_tensor imports torch when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

WHITE = (255, 255, 255)
# Largest factor between a reference's aspect ratio and the output's: the cover-crop keeps 1/ratio of the
# image along one axis (a 1x400 strip at 1024x1024 would keep 1/400 of it, blown up 1024 times).
MAX_CROP_RATIO = 8.0


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


def crop_ratio(size: tuple[int, int], target: tuple[int, int]) -> float:
    """How many times wider (or taller) than the target's shape an image of `size` is (1 = same shape)."""
    source_aspect, target_aspect = size[0] / size[1], target[0] / target[1]
    return max(source_aspect / target_aspect, target_aspect / source_aspect)


def crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred box of an image of `size` that has the target's aspect ratio and is as large as possible."""
    width, height = size
    box_w, box_h = min(width, height * target[0] / target[1]), min(height, width * target[1] / target[0])
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """The centre of the image with the target's aspect ratio, scaled (Lanczos) to exactly width x height.

    Crop first, then scale: only the kept part is resampled, straight to the output size, so memory is
    bounded by the output whatever the input's shape. Nothing is stretched and no borders are added; an image
    that already has the size is returned as is.
    """
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS, box=crop_box(image.size, (width, height)))


def reference_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Reference image -> fp32 [1, 3, height, width] in [-1, 1] (the VAE encoder's input range)."""
    import torch
    pixels = np.asarray(cover_crop(to_rgb(image), width, height), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return tensor * 2.0 - 1.0


def to_pil_images(decoded: torch.Tensor) -> list[Image.Image]:
    """VAE output [B, 3, H, W] in about [-1, 1] -> 8-bit RGB images (x/2 + 0.5, clamped, rounded)."""
    pixels = (decoded.float() / 2 + 0.5).clamp(0, 1)
    array = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(item) for item in array]
