"""Weight-free control-map preprocessors (pure functions on PIL images) and the ControlNet input layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.control.conditioning import control_context, masked_pixels
from model.control.preprocess import CONTROL_MODES, canny, gray, lineart, preprocess, scribble


def _square(size=(64, 48)) -> Image.Image:
    """A dark square on a light background: edges along its border only."""
    pixels = np.full((size[1], size[0], 3), 220, dtype=np.uint8)
    pixels[12:36, 16:48] = (30, 60, 90)
    return Image.fromarray(pixels)


def _array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    rgb = np.asarray(image, dtype=np.int16)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # gray maps
    return rgb[..., 0]


def _near_border(values: np.ndarray, threshold, above: bool, margin: int = 3) -> tuple[float, float]:
    """Share of marked pixels within `margin` px of the square's border, and share farther from it."""
    marked = values > threshold if above else values < threshold
    border = np.zeros_like(marked)
    border[12 - margin:36 + margin, 16 - margin:48 + margin] = True
    border[12 + margin:36 - margin, 16 + margin:48 - margin] = False
    return marked[border].mean(), marked[~border].mean()


def test_canny_marks_the_square_outline_white_on_black():
    edges = _array(canny(_square()))
    assert set(np.unique(edges)) <= {0, 255}
    near, far = _near_border(edges, 127, above=True)
    assert near > 0.1 and far == 0


def test_scribble_marks_bold_strokes_on_the_outline():
    strokes = _array(scribble(_square()))
    assert set(np.unique(strokes)) <= {0, 255}
    near, far = _near_border(strokes, 127, above=True, margin=5)  # thickened by the dilation
    assert near > 0.2 and far == 0


def test_lineart_draws_dark_lines_on_white():
    lines = _array(lineart(_square()))
    near, far = _near_border(lines, 200, above=False)
    assert near > 0.1 and far == 0
    assert np.median(lines) == 255


def test_gray_is_the_luminance():
    image = _square()
    assert np.array_equal(_array(gray(image)), np.asarray(image.convert("L"), dtype=np.int16))


def test_every_mode_keeps_the_size_and_unknown_modes_are_refused():
    image = _square().convert("RGBA")  # any PIL mode is accepted
    for mode in CONTROL_MODES:
        assert preprocess(mode, image).size == (64, 48)
    with pytest.raises(ValueError, match="unknown control mode 'depth'"):
        preprocess("depth", image)


def test_control_context_channel_layout():
    control = torch.full((1, 16, 6, 8), 2.0)
    keep = torch.zeros(1, 1, 6, 8)
    keep[..., :4] = 1
    masked = torch.full((1, 16, 6, 8), -3.0)
    full = control_context(33, (6, 8), torch.device("cpu"), control, keep, masked)
    assert full.shape == (33, 1, 6, 8)
    assert (full[:16] == 2).all() and torch.equal(full[16, 0], keep[0, 0]) and (full[17:] == -3).all()
    plain = control_context(33, (6, 8), torch.device("cpu"), control)  # no mask: the 17 extra channels are 0
    assert (plain[:16] == 2).all() and not plain[16:].any()
    assert control_context(16, (6, 8), torch.device("cpu"), control).shape == (16, 1, 6, 8)
    pixels = torch.ones(1, 3, 4, 4)
    repaint = torch.zeros(1, 1, 4, 4)
    repaint[..., :2] = 1
    assert torch.equal(masked_pixels(pixels, repaint)[..., :2], torch.zeros(1, 3, 4, 2))
    assert torch.equal(masked_pixels(pixels, repaint)[..., 2:], torch.ones(1, 3, 4, 2))
