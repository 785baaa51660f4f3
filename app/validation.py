"""Checks shared by every door: prompt, sizes, numeric ranges and uploaded images (bytes, pixels, format)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import warnings
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from app.errors import ServiceError, out_of_range
from app.settings import Settings
from model.request import GenerationRequest

MAX_SEED = 2**32 - 1
RANDOM_SEED = -1  # a seed field left at this draws a new seed for each request

# What every door (form, REST, exported code) shows or sends for a field left out: the engine's defaults,
# read from GenerationRequest so they are written once, except the seed, which the doors draw per request.
DOOR_FIELDS = ("negative_prompt", "guidance", "steps", "width", "height", "batch_size", "strength", "shift",
               "cfg_truncation", "cfg_normalization")
DOOR_DEFAULTS: dict[str, Any] = {**{f.name: f.default for f in dataclasses.fields(GenerationRequest)
                                    if f.name in DOOR_FIELDS}, "seed": RANDOM_SEED}
SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")

# field -> (low, high) for the numeric fields that have no setting of their own.
FIXED_RANGES: dict[str, tuple[float, float]] = {
    "guidance": (0.0, 20.0),
    "strength": (0.01, 1.0),
    "shift": (0.1, 20.0),
    "cfg_truncation": (0.0, 1.0),
    "cfg_normalization": (0.0, 10.0),
    "seed": (RANDOM_SEED, MAX_SEED),
}


def parse_size(text: str) -> tuple[int, int]:
    """"1024x768" -> (1024, 768) (width, height)."""
    match = SIZE_PATTERN.match(text or "")
    if not match:
        raise ServiceError("size_format", field="size", value=text)
    return int(match.group(1)), int(match.group(2))


def check_prompt_text(prompt: str, settings: Settings) -> str:
    """Reject empty or absurdly long prompts before they reach the tokenizer."""
    if not prompt or not prompt.strip():
        raise ServiceError("prompt_empty", field="prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise ServiceError("prompt_too_many_chars", field="prompt", chars=len(prompt),
                           limit=settings.max_prompt_chars)
    return prompt


def check_prompt_tokens(prompt: str, settings: Settings, count_tokens: Callable[[str], int]) -> int:
    """Token count of `prompt`; an error when it exceeds the limit (we never cut prompts silently)."""
    tokens = count_tokens(prompt)
    if tokens > settings.max_prompt_tokens:
        raise ServiceError("prompt_too_long", field="prompt", tokens=tokens, limit=settings.max_prompt_tokens)
    return tokens


def check_request(request: GenerationRequest, settings: Settings) -> None:
    """Range checks for every numeric field of a request; the first violation is raised."""
    check_prompt_text(request.prompt, settings)
    for name, value in (("width", request.width), ("height", request.height)):
        if value % 16 or not settings.min_size <= value <= settings.max_size:
            raise ServiceError("size_out_of_range", field=name, value=value,
                               min=settings.min_size, max=settings.max_size)
    if not 1 <= request.batch_size <= settings.max_batch:
        raise out_of_range("n", request.batch_size, 1, settings.max_batch)
    if not 1 <= request.steps <= settings.max_steps:
        raise out_of_range("steps", request.steps, 1, settings.max_steps)
    for name, (low, high) in FIXED_RANGES.items():
        value = getattr(request, name)
        if not low <= value <= high:
            raise out_of_range(name, value, low, high)


def decode_base64_image(text: str, settings: Settings, field: str = "image") -> Image.Image:
    """A base64 string (or data: URL) -> RGB image, with the same limits as a file upload."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    # base64 grows data by 4/3: refuse before decoding so a huge string costs nothing.
    if len(payload) * 3 // 4 > settings.max_upload_bytes:
        raise ServiceError("upload_too_large", status=413, field=field, size=len(payload) * 3 // 4,
                           limit=settings.max_upload_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("bad_base64", field=field) from None
    return decode_image_bytes(data, settings, field)


def decode_image_bytes(data: bytes, settings: Settings, field: str = "image") -> Image.Image:
    """Open an uploaded image safely: size in bytes, then pixel count from the header, then decode."""
    if len(data) > settings.max_upload_bytes:
        raise ServiceError("upload_too_large", status=413, field=field, size=len(data),
                           limit=settings.max_upload_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # The header gives the size without decoding pixels: a decompression bomb stops here.
            width, height = image.size
            if width * height > settings.max_upload_pixels:
                raise _too_many_pixels(field, width * height, settings)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow refuses absurd headers inside open(); its message holds the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_many_pixels(field, int(found.group(1)) if found else "?", settings) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ServiceError("not_an_image", field=field) from None
    return image.convert("RGB")


def _too_many_pixels(field: str, pixels: object, settings: Settings) -> ServiceError:
    return ServiceError("upload_too_many_pixels", field=field, pixels=pixels, limit=settings.max_upload_pixels)


def open_uploaded_file(path: str, settings: Settings, field: str = "image") -> Image.Image:
    """Read an uploaded file from disk (Gradio hands us a temp path) under the upload limits."""
    with open(path, "rb") as handle:
        data = handle.read(settings.max_upload_bytes + 1)
    return decode_image_bytes(data, settings, field)
