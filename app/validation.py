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
from model.control.validation import validate_control
from model.errors import InvalidRequestError
from model.images import MAX_CROP_RATIO, crop_ratio
from model.request import GenerationRequest

SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """"1024x768" -> (1024, 768) (width, height)."""
    match = SIZE_PATTERN.match(text or "")
    if not match:
        raise ServiceError("size_format", field="size", value=text)
    return int(match.group(1)), int(match.group(2))


# The prompt fields: both have the same limits; their errors use the keys <field>_too_many_chars / _too_long.
PROMPT_FIELDS = ("prompt", "negative_prompt")
# Formats an upload may be (Pillow tries only these): no EPS (Ghostscript), no other exotic decoder.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def check_text(field: str, text: str) -> str:
    """Text the tokenizer and the PNG recipe can hold: valid Unicode (JSON can carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ServiceError("text_not_unicode", field=field) from None
    return text


def check_prompt_text(field: str, text: str, settings: Settings) -> str:
    """Reject an empty prompt, and absurdly long or invalid prompt text, before it reaches the tokenizer."""
    if field == "prompt" and (not text or not text.strip()):
        raise ServiceError("prompt_empty", field=field)
    if len(text) > settings.max_prompt_chars:
        raise ServiceError(f"{field}_too_many_chars", field=field, chars=len(text), limit=settings.max_prompt_chars)
    return check_text(field, text)


def check_prompt_tokens(field: str, text: str, limit: int, count_tokens: Callable[[str], int]) -> int:
    """Token count of prompt field `field`; an error when it exceeds `limit` (prompts are never cut silently)."""
    tokens = count_tokens(text)
    if tokens > limit:
        raise ServiceError(f"{field}_too_long", field=field, tokens=tokens, limit=limit)
    return tokens


def check_request(request: GenerationRequest, settings: Settings, door: str = "gradio") -> None:
    """Text checks of both prompts, then range checks for every numeric field (the engine's limits narrowed by
    the settings), the choice fields' values, the reference image's shape and the engine's control/mask
    checks; the first violation is raised, named as `door` calls it."""
    for name in PROMPT_FIELDS:
        check_prompt_text(name, getattr(request, name), settings)
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
    if request.reference_image is not None:
        check_reference_shape(request.reference_image.size, (request.width, request.height),
                              door_name("reference_image", door))
    try:  # the engine's own checks of the mask and control fields, before the job waits in the queue
        validate_control(request)
    except InvalidRequestError as err:
        raise ServiceError("invalid_value", field=door_name(err.field, door), detail=str(err)) from None


def check_reference_shape(size: tuple[int, int], target: tuple[int, int], field: str) -> None:
    """Refuse a reference the cover-crop would mostly throw away (model.images.MAX_CROP_RATIO)."""
    ratio = crop_ratio(size, target)
    if ratio > MAX_CROP_RATIO:
        raise ServiceError("reference_aspect", field=field, width=size[0], height=size[1], target_width=target[0],
                           target_height=target[1], ratio=ratio, limit=MAX_CROP_RATIO)


def decode_base64_image(text: str, settings: Settings, field: str = "image") -> Image.Image:
    """A base64 string (or data: URL) -> RGB image, with the same limits as a file upload."""
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ServiceError("bad_base64", field=field)
    else:
        payload = text
    # base64 grows data by 4/3: refuse before decoding so a huge string costs nothing.
    if len(payload) * 3 // 4 > settings.max_upload_bytes:
        raise ServiceError("upload_too_large", status=413, field=field, size=len(payload) * 3 // 4,
                           limit=settings.max_upload_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("bad_base64", field=field) from None
    return decode_image_bytes(data, settings, field)


def decode_image_bytes(data: bytes, settings: Settings, field: str = "image", mode: str = "RGB") -> Image.Image:
    """Open an uploaded image safely: size in bytes, then pixel count from the header, then decode (to `mode`:
    "RGBA" keeps the transparency an OpenAI edit mask is made of)."""
    if len(data) > settings.max_upload_bytes:
        raise ServiceError("upload_too_large", status=413, field=field, size=len(data),
                           limit=settings.max_upload_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
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
    return image.convert(mode)


def _too_many_pixels(field: str, pixels: object, settings: Settings) -> ServiceError:
    return ServiceError("upload_too_many_pixels", field=field, pixels=pixels, limit=settings.max_upload_pixels)


def open_uploaded_file(path: str, settings: Settings, field: str = "image") -> Image.Image:
    """Read an uploaded file from disk (Gradio hands us a temp path) under the upload limits."""
    with open(path, "rb") as handle:
        data = handle.read(settings.max_upload_bytes + 1)
    return decode_image_bytes(data, settings, field)
