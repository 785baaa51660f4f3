"""Checks shared by every door: prompt, sizes, numeric ranges and uploaded images (bytes, pixels, format)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Callable

from PIL import Image, UnidentifiedImageError

from app.errors import ServiceError, out_of_range
from app.fields import CHOICE_FIELDS, NUMERIC_FIELDS, SIZE_MULTIPLE, door_name, field_range
from app.settings import Settings
from model.request import GenerationRequest

SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


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


def check_request(request: GenerationRequest, settings: Settings, door: str = "gradio") -> None:
    """Range checks for every numeric field of a request (the engine's limits narrowed by the settings) and
    the choice fields' values; the first violation is raised, naming the field as `door` calls it."""
    check_prompt_text(request.prompt, settings)
    for field in NUMERIC_FIELDS:
        value = getattr(request, field.name)
        low, high = field_range(field.name, settings)
        if field.name in ("width", "height"):
            if value % SIZE_MULTIPLE or not low <= value <= high:
                raise ServiceError("size_out_of_range", field=field.name, value=value, min=low, max=high)
        elif not low <= value <= high:
            raise out_of_range(door_name(field.name, door), value, low, high)
    for field in CHOICE_FIELDS:
        if getattr(request, field.name) not in field.choices:
            raise ServiceError("not_a_choice", field=door_name(field.name, door), value=getattr(request, field.name),
                               choices=", ".join(field.choices), default=field.default)


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
