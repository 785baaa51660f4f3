"""Control-map preprocessors that need no downloaded weights: pure functions, PIL image in, RGB map out.

Modes (`CONTROL_MODES`): "map" uses the image as it is (a depth, pose, HED or MLSD map made
elsewhere, or the photo itself for the Tile ControlNet); "canny" (OpenCV Canny edges, white on
black, as controlnet_aux's CannyDetector); "gray" (grayscale, for the 2602 Gray mode); "scribble"
(thick binarised edges of a difference of Gaussians, XDoG-style, white on black); "lineart"
(thin dark lines on white from the same difference of Gaussians, like controlnet_aux's
lineart_standard). Depth and pose need models: the doors ask for an uploaded map instead.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from PIL import Image

from model.images import to_rgb

CANNY_LOW, CANNY_HIGH = 100, 200  # controlnet_aux CannyDetector defaults
DOG_SIGMA = 1.0  # the difference of Gaussians: sigma and 1.6 x sigma (Marr-Hildreth ratio)
DOG_RATIO = 1.6
SCRIBBLE_THRESHOLD = 4.0  # DoG response (gray levels) that counts as a stroke
SCRIBBLE_WIDTH = 3  # stroke thickening (pixels of the dilation kernel)
LINEART_GAIN = 6.0  # contrast of the line drawing


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image).convert("L"), dtype=np.uint8)


def _rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _difference_of_gaussians(gray: np.ndarray) -> np.ndarray:
    """Positive DoG response (float32): where an image is darker than its surroundings, i.e. lines."""
    image = gray.astype(np.float32)
    fine = cv2.GaussianBlur(image, (0, 0), DOG_SIGMA)
    coarse = cv2.GaussianBlur(image, (0, 0), DOG_SIGMA * DOG_RATIO)
    return np.maximum(coarse - fine, 0.0)


def canny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """White edges on black (OpenCV Canny with hysteresis thresholds `low`/`high`)."""
    return _rgb(cv2.Canny(_gray(image), low, high))


def gray(image: Image.Image) -> Image.Image:
    """The image in grayscale (as RGB, the width every control map has)."""
    return _rgb(_gray(image))


def scribble(image: Image.Image) -> Image.Image:
    """Bold white strokes on black where the image has lines (thresholded, dilated DoG)."""
    response = _difference_of_gaussians(_gray(image))
    strokes = (response >= SCRIBBLE_THRESHOLD).astype(np.uint8) * 255
    kernel = np.ones((SCRIBBLE_WIDTH, SCRIBBLE_WIDTH), np.uint8)
    return _rgb(cv2.dilate(strokes, kernel))


def lineart(image: Image.Image) -> Image.Image:
    """Dark lines on white (a scaled DoG response, inverted), like a pencil line drawing."""
    response = _difference_of_gaussians(_gray(image))
    return _rgb(255.0 - response * LINEART_GAIN)


def as_map(image: Image.Image) -> Image.Image:
    """The image itself as the control map (RGB)."""
    return to_rgb(image)


PREPROCESSORS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "map": as_map, "canny": canny, "gray": gray, "scribble": scribble, "lineart": lineart,
}
CONTROL_MODES = tuple(PREPROCESSORS)


def preprocess(mode: str, image: Image.Image) -> Image.Image:
    """The control map of `image` for `mode` (one of CONTROL_MODES)."""
    if mode not in PREPROCESSORS:
        raise ValueError(f"unknown control mode {mode!r}; choose one of {', '.join(CONTROL_MODES)}")
    return PREPROCESSORS[mode](image)
