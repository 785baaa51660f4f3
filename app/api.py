"""REST door: OpenAI-compatible POST /v1/images/generations and GET /v1/models, errors in OpenAI shape."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any, Awaitable, Callable, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from app.errors import ServiceError, out_of_range
from app.i18n import language_from_header
from app.jobs import Job, JobState
from app.control import resolve_controlnet
from app.loras import MAX_LORAS, resolve_loras
from app.service import GenerationService
from app.settings import Settings
from app.fields import DOOR_DEFAULTS, FIELDS, IMAGE_FIELDS, RequestField
from app.validation import decode_base64_image, parse_size
from model.request import GenerationRequest

logger = logging.getLogger(__name__)

MODEL_ID = "z-image-turbo"
# JSON overhead allowed on top of a maximal base64 image.
BODY_SLACK_BYTES = 256 * 1024
# Digits of the largest integer any field takes (a 64-bit seed has 20).
MAX_INT_DIGITS = 20


class LoraItem(BaseModel):
    """One LoRA by file name in ZIMAGE_LORA_DIR, with its strength."""

    model_config = ConfigDict(extra="forbid")
    name: str
    scale: float = 1.0


class OpenAIFields(BaseModel):
    """The OpenAI Images API fields that are no request field of ours (or several: size); unknown fields are
    refused. ImagesRequest adds every field of app.fields under its REST name."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    size: str = f"{DOOR_DEFAULTS['width']}x{DOOR_DEFAULTS['height']}"
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


def _rest_field(field: RequestField) -> tuple[Any, Any]:
    """(annotation, default) of a table field in the REST model; images are base64 text there."""
    if field.name == "prompt":
        return str, ...
    if field.kind is object:
        return str | None, None
    return (field.kind if field.default is not None else field.kind | None), field.default


# The REST body: OpenAI's fields, then ours (from the field table), then the LoRA list.
ImagesRequest = create_model(
    "ImagesRequest", __base__=OpenAIFields, __doc__="OpenAI Images API fields plus our extras.",
    **{field.rest: _rest_field(field) for field in FIELDS if field.rest},
    loras=(list[LoraItem], []),
)


def build_router(service: GenerationService) -> APIRouter:
    """The /v1 routes, bound to the one service every door shares."""
    router = APIRouter()
    settings = service.settings

    @router.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local",
                          "ready": service.ready}]}

    @router.post("/v1/images/generations")
    async def create_images(request: Request) -> JSONResponse:
        async def prepare() -> tuple[Job, OpenAIFields]:
            body = await read_request(request, settings)
            # In a thread: decoding the images and tokenizing the prompt (in submit) would block the event loop.
            return await asyncio.to_thread(submit_body, service, body), body

        return await respond(request, service, prepare)

    return router


def error_response(err: ServiceError, lang: str) -> JSONResponse:
    """The OpenAI error body, with the error's headers (Retry-After on a full queue, ours or the replicas')."""
    return JSONResponse(err.openai_body(lang), status_code=err.status, headers=err.headers)


async def respond(request: Request, service: GenerationService,
                  prepare: Callable[[], Awaitable[tuple[Job, OpenAIFields]]]) -> JSONResponse:
    """Queue the job `prepare` builds, wait for it, answer in OpenAI's shape (errors too, in the client's
    language)."""
    lang = language_from_header(request.headers.get("accept-language"))
    try:
        job, body = await prepare()
    except ServiceError as err:
        service.metrics.error(err.key)
        return error_response(err, lang)
    try:
        await wait_for_job(job, request, service)
    except ServiceError as err:  # the job failed: the service already counted it
        return error_response(err, lang)
    return JSONResponse(success_body(job, body))


def max_body_bytes(settings: Settings) -> int:
    """Largest JSON body: every image field at the upload limit in base64 (4/3 larger), plus the rest."""
    return len(IMAGE_FIELDS) * settings.max_upload_bytes * 4 // 3 + BODY_SLACK_BYTES


async def read_request(request: Request, settings: Settings) -> OpenAIFields:
    """The validated REST fields of a generation request (this endpoint's and the stream's). The parse runs
    in a thread: a 27 MB body would otherwise block the event loop, and with it /health/live."""
    raw = await read_body(request, max_body_bytes(settings))
    return await asyncio.to_thread(parse_request, raw, settings)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused once it grows past `limit` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError("upload_too_large", status=413, field="body", size=size, limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def max_json_items(settings: Settings) -> int:
    """Commas a valid body can hold: those inside the two prompts plus a few hundred for the fields and LoRAs
    (base64 has none). Every element of a JSON list or object after the first needs one, so this bounds every
    list before anything is parsed: json.loads holds the GIL, and 2,000,000 items stall every thread."""
    return 2 * settings.max_prompt_chars + 512


def decode_json(raw: bytes, settings: Settings) -> dict:
    """The JSON object in `raw`; too many items, too deep, not JSON or not an object are client errors."""
    commas, limit = raw.count(b","), max_json_items(settings)
    if commas > limit:
        raise ServiceError("body_too_complex", field="body", count=commas, limit=limit, loras=MAX_LORAS)
    try:
        data = json.loads(raw or b"null", parse_int=_parse_int)
    except RecursionError:
        raise ServiceError("invalid_json", field="body", detail="nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ServiceError("invalid_json", field="body", detail=str(err)[:200]) from None
    if not isinstance(data, dict):
        raise ServiceError("invalid_json", field="body", detail="expected a JSON object")
    return data


def _parse_int(text: str) -> int | float:
    """JSON integers beyond any field's range become floats (inf past 308 digits): the field's own check then
    refuses them by name, and Python's 4300-digit int limit is never reached."""
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


def parse_request(raw: bytes, settings: Settings) -> OpenAIFields:
    """Body bytes -> validated REST fields (blocking: run it in a thread)."""
    return parse_body(decode_json(raw, settings))


def parse_body(data: dict) -> OpenAIFields:
    """Validate fields; the first problem becomes one clear error naming the field."""
    loras = data.get("loras")
    if isinstance(loras, list) and len(loras) > MAX_LORAS:  # before pydantic builds an object per item
        raise out_of_range("loras", len(loras), 0, MAX_LORAS)
    try:
        return ImagesRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            model = LoraItem if field.startswith("loras.") else ImagesRequest
            raise ServiceError("unknown_field", field=field, accepted=", ".join(model.model_fields)) from None
        if first["type"] == "missing":
            raise ServiceError("missing_field", field=field) from None
        raise ServiceError("wrong_type", status=422, field=field, detail=first["msg"]) from None


def submit_body(service: GenerationService, body: OpenAIFields, previews: bool = False) -> Job:
    """Build the engine request and queue it (blocking: image decoding and prompt tokenizing)."""
    return service.submit(to_generation_request(body, service.settings), door="rest", previews=previews)


def to_generation_request(body: OpenAIFields, settings: Settings) -> GenerationRequest:
    """REST fields -> engine request (decodes the base64 images, resolves the LoRA and ControlNet names)."""
    return build_request(body, settings, decode_images(body, settings))


def decode_images(body: OpenAIFields, settings: Settings) -> dict[str, Any]:
    """Every base64 image field (image, mask, control_image) under the upload limits, named as the client
    sent it: field name -> PIL image, or None when left out."""
    return {field.name: decode_base64_image(getattr(body, field.rest), settings, field.rest)
            if getattr(body, field.rest) else None for field in IMAGE_FIELDS}


def build_request(body: OpenAIFields, settings: Settings, images: dict[str, Any]) -> GenerationRequest:
    """REST fields plus decoded images (field name -> PIL image or None) -> engine request."""
    if body.response_format == "url":
        raise ServiceError("url_format_unsupported", field="response_format")
    width, height = parse_size(body.size)
    loras = resolve_loras([item.model_dump() for item in body.loras], settings.lora_dir)
    values = {field.name: getattr(body, field.rest) for field in FIELDS if field.rest and field.kind is not object}
    values["controlnet"] = resolve_controlnet(body.controlnet, settings.controlnet_dir)
    return GenerationRequest(**values, **images, width=width, height=height, loras=loras)


async def wait_for_job(job: Job, request: Request, service: GenerationService) -> None:
    """Wait for the job without holding a thread; cancel it if the client goes away."""
    while not job.done:
        await asyncio.to_thread(job.wait, 0.5)
        if not job.done and await request.is_disconnected():
            logger.info("%s: client disconnected, cancelling", job.id)
            service.cancel(job)
    if job.state != JobState.SUCCEEDED:
        raise job.error or ServiceError("internal_error", status=500, detail="job ended without a result")


def success_body(job: Job, body: OpenAIFields) -> dict:
    """OpenAI response shape plus our extras (seeds, timings, queue facts) that the SDK keeps."""
    assert job.result is not None
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(image.png).decode("ascii"), "revised_prompt": body.prompt,
                  "seed": image.seed} for image in job.result.images],
        "seeds": job.result.seeds,
        "timings": {k: round(v, 4) for k, v in job.result.timings.items()},
        "job": job.summary(),
    }
