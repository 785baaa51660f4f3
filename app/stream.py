"""REST progress stream: POST /v1/images/generations/stream answers with server-sent events.

Same body as POST /v1/images/generations. Events: `queued` {"ahead"}, `progress` {"step", "total"} after
steps (with "preview": base64 JPEG when asked with `?preview=true` and the `previews` setting is on), then
one `result` (the normal endpoint's body) or one `error` (the OpenAI error body plus "status"). A client that
disconnects cancels its job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import error_response, read_request, submit_body, success_body
from app.errors import ServiceError
from app.i18n import language_from_header
from app.jobs import Job, JobState
from app.service import GenerationService

logger = logging.getLogger(__name__)

WAIT_SECONDS = 0.5


def sse(event: str, data: dict) -> bytes:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


def build_stream_router(service: GenerationService) -> APIRouter:
    router = APIRouter()
    settings = service.settings

    @router.post("/v1/images/generations/stream", response_model=None)
    async def stream_images(request: Request, preview: bool = False) -> StreamingResponse | JSONResponse:
        lang = language_from_header(request.headers.get("accept-language"))
        try:
            body = await read_request(request, settings)
            job = await asyncio.to_thread(submit_body, service, body, preview)
        except ServiceError as err:  # refused before queueing: a plain error response, as the normal endpoint
            service.metrics.error(err.key)
            return error_response(err, lang)
        return StreamingResponse(job_events(job, body, service, lang), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router


async def job_events(job: Job, body, service: GenerationService, lang: str) -> AsyncIterator[bytes]:
    """The job's life as events; cancels the job when the client goes away (the generator is closed)."""
    version, sent_step, sent_preview = -1, -1, 0
    try:
        while True:
            version = await asyncio.to_thread(job.wait_for_change, version, WAIT_SECONDS)
            if job.state == JobState.QUEUED:
                yield sse("queued", {"ahead": service.jobs_ahead(job)})
            elif job.state == JobState.RUNNING and job.step != sent_step:
                sent_step = job.step
                event = {"step": job.step, "total": job.total_steps or job.request.steps}
                if job.preview is not None and job.preview_step != sent_preview:
                    sent_preview = job.preview_step
                    event["preview"] = base64.b64encode(job.preview).decode("ascii")
                    event["preview_step"] = sent_preview
                yield sse("progress", event)
            elif job.done:
                break
        if job.state == JobState.SUCCEEDED:
            yield sse("result", success_body(job, body))
        else:
            error = job.error or ServiceError("internal_error", status=500, detail="job ended without a result")
            yield sse("error", {**error.openai_body(lang), "status": error.status})
    finally:
        if not job.done:
            logger.info("%s: stream client disconnected, cancelling", job.id)
            service.cancel(job)
