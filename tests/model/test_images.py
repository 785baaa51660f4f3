"""Reference-image preparation (cover + centre crop, alpha onto white) and VAE output conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import MAX_CROP_RATIO, cover_crop, crop_box, crop_ratio, reference_tensor, to_pil_images, to_rgb


def test_cover_crop_keeps_aspect_and_takes_the_centre():
    # 200x100: left half red, right half blue, a green 20-px column in the middle.
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:] = (0, 0, 255)
    pixels[:, 90:110] = (0, 255, 0)
    out = np.asarray(cover_crop(Image.fromarray(pixels), 64, 64))
    assert out.shape == (64, 64, 3)
    assert tuple(out[32, 32]) == (0, 255, 0)  # the centre survives
    assert out[32, 2, 0] > 200 and out[32, 61, 2] > 200  # red left, blue right: not stretched away


def test_cover_crop_upscales_small_images_to_cover():
    out = cover_crop(Image.new("RGB", (10, 40), (1, 2, 3)), 64, 32)
    assert out.size == (64, 32)


def test_same_size_is_untouched():
    image = Image.new("RGB", (32, 16), (9, 8, 7))
    assert cover_crop(image, 32, 16) is image


def test_transparency_goes_onto_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_reference_tensor_range_and_layout():
    tensor = reference_tensor(Image.new("RGB", (48, 32), (255, 0, 128)), 48, 32)
    assert tensor.shape == (1, 3, 32, 48) and tensor.dtype == torch.float32
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)


def test_to_pil_rounds_and_clamps():
    decoded = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    image = to_pil_images(decoded)[0]
    assert [image.getpixel((i, 0))[0] for i in range(5)] == [0, 0, 128, 255, 255]


def test_cover_crop_crops_before_scaling(monkeypatch):
    """A 1x400 strip at 1024x1024: only the kept 1x1 centre is resampled (no 1024x409600 intermediate)."""
    sizes = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    strip = Image.new("RGB", (1, 400), (5, 6, 7))
    strip.putpixel((0, 200), (250, 0, 0))
    out = cover_crop(strip, 1024, 1024)
    assert out.size == (1024, 1024) and max(w * h for w, h in sizes) <= 1024 * 1024
    assert out.getpixel((512, 512))[0] > 100  # the centre pixel is what is kept


def test_crop_ratio_and_box():
    assert crop_ratio((1, 400), (1024, 1024)) == 400
    assert crop_ratio((200, 100), (100, 200)) == 4
    assert crop_box((200, 100), (64, 64)) == (50, 0, 150, 100)
    assert crop_ratio((10, 40), (64, 32)) == MAX_CROP_RATIO  # the limit is inclusive
