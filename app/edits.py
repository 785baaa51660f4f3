"""OpenAI's POST /v1/images/edits (multipart/form-data, what the SDK's images.edit sends) mapped onto inpainting.

OpenAI's fields: `image` (the picture to edit), an optional `mask` (a PNG of the same size whose fully
transparent pixels, alpha 0, mark the area to edit), `prompt`, `n`, `size`, `response_format`, `model`.
Without a mask the image's own fully transparent pixels are the mask, as OpenAI does; an opaque image without
a mask becomes a plain reference (img2img). Our engine's mask is white = repaint, so alpha 0 -> white and every
other alpha -> black.

Strength: 1.0 when there is a mask, so the edited area is generated anew from the prompt while the latent blend
keeps the rest of the picture (OpenAI's edit); without a mask the usual img2img default. A `strength` form field
overrides both, and our other REST fields (steps, seed, guidance_scale, negative_prompt, loras excepted) are
form fields here too, validated by the same REST model.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api import OpenAIFields, build_request, decode_images, max_body_bytes, parse_body, read_body, respond
from app.errors import ServiceError
from app.jobs import Job
from app.service import GenerationService
from app.settings import Settings
from app.validation import decode_image_bytes
from model.request import MASK_KEEP, MASK_REPAINT

EDITS_PATH = "/v1/images/edits"
# Form file fields -> our field (the SDK names a list of images "image[]"; this server edits one image).
# OpenAI's two files, and our control image as a file too (a base64 text field is capped like a prompt).
FILE_FIELDS = {"image": "reference_image", "image[]": "reference_image", "mask": "mask",
               "control_image": "control_image"}
EDIT_STRENGTH = 1.0  # with a mask: the edited area is generated anew (see the module doc)
MAX_FORM_FIELDS = 64  # text fields: every REST field fits many times over
MAX_CHARS_PER_FIELD = 4  # UTF-8 bytes per prompt character at most


def build_edits_router(service: GenerationService) -> APIRouter:
    """POST /v1/images/edits, bound to the one service every door shares."""
    router = APIRouter()
    settings = service.settings

    @router.post(EDITS_PATH)
    async def edit_images(request: Request) -> JSONResponse:
        async def prepare() -> tuple[Job, OpenAIFields]:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "multipart/form-data":
                raise ServiceError("multipart_required", status=415, field="Content-Type",
                                   content_type=content_type[:100])
            raw = await read_body(request, max_body_bytes(settings))
            texts, files = await read_form(request.headers, raw, settings)
            # In a thread: decoding the images and tokenizing the prompt would block the event loop.
            return await asyncio.to_thread(submit_edit, service, texts, files)

        return await respond(request, service, prepare)

    return router


async def read_form(headers: Headers, raw: bytes, settings: Settings) -> tuple[dict[str, str], dict[str, bytes]]:
    """(text fields, file field -> bytes) of a bounded multipart body; at most one image, one mask and one
    control image."""
    async def stream() -> AsyncIterator[bytes]:
        yield raw

    parser = MultiPartParser(headers, stream(), max_files=len(set(FILE_FIELDS.values())), max_fields=MAX_FORM_FIELDS,
                             max_part_size=settings.max_prompt_chars * MAX_CHARS_PER_FIELD + 1024)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise ServiceError("invalid_form", field="body", detail=str(err)) from None
    texts: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = FILE_FIELDS.get(key)
                if name is None:
                    raise ServiceError("invalid_form", field=key, detail="only image, mask and control_image may be "
                                                                               "files")
                if name in files:
                    raise ServiceError("invalid_form", field=key, detail="send one image; this server edits one "
                                                                         "image per request")
                files[name] = await value.read()
            elif key in FILE_FIELDS:
                raise ServiceError("invalid_form", field=key, detail="must be a file (an image upload)")
            else:
                texts[key] = value
    finally:
        await form.close()
    return texts, files


def submit_edit(service: GenerationService, texts: dict[str, str],
                files: dict[str, bytes]) -> tuple[Job, OpenAIFields]:
    """Form fields and files -> a queued inpainting (or img2img) job, and the validated fields."""
    settings = service.settings
    if "reference_image" not in files:
        raise ServiceError("missing_field", field="image")
    image = decode_image_bytes(files["reference_image"], settings, "image", mode="RGBA")
    if "mask" in files:
        mask: Image.Image | None = repaint_mask(decode_image_bytes(files["mask"], settings, "mask", mode="RGBA"))
    else:
        mask = repaint_mask(image) if has_transparency(image) else None
    if mask is not None and "strength" not in texts:
        texts = {**texts, "strength": str(EDIT_STRENGTH)}
    body = parse_body(texts)
    images = {**decode_images(body, settings), "reference_image": image.convert("RGB"), "mask": mask}
    if "control_image" in files:
        images["control_image"] = decode_image_bytes(files["control_image"], settings, "control_image")
    return service.submit(build_request(body, settings, images), door="rest"), body


def has_transparency(rgba: Image.Image) -> bool:
    """Whether any pixel is fully transparent (an opaque image converted to RGBA has alpha 255 everywhere)."""
    return rgba.getchannel("A").getextrema()[0] == 0


def repaint_mask(rgba: Image.Image) -> Image.Image:
    """OpenAI's mask (alpha 0 = edit) as ours: white where alpha is 0, black everywhere else."""
    return rgba.getchannel("A").point(lambda value: MASK_REPAINT if value == 0 else MASK_KEEP)

