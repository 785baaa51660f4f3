"""Live step previews: the engine's small clean-image estimate, JPEG-encoded for the doors, throttled."""

from __future__ import annotations

import io
import time
from typing import Callable

from PIL import Image

from app.jobs import Job
from model.request import StepProgress

PREVIEW_MAX_SIDE = 256
# At most one preview per this many seconds: a fast GPU runs several steps in that time, and each preview
# costs the worker a few milliseconds and the browser one image download.
PREVIEW_INTERVAL_SECONDS = 0.3
JPEG_QUALITY = 80


def preview_jpeg(images: list[Image.Image]) -> bytes:
    """The batch part's previews side by side, at most PREVIEW_MAX_SIDE pixels a side, as JPEG bytes."""
    strip = Image.new("RGB", (sum(image.width for image in images), max(image.height for image in images)))
    left = 0
    for image in images:
        strip.paste(image.convert("RGB"), (left, 0))
        left += image.width
    strip.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def preview_due(progress: StepProgress, last_at: float | None, now: float) -> bool:
    """Whether this step gets a preview: the last one is PREVIEW_INTERVAL_SECONDS old, or this is the final step."""
    if progress.preview is None:
        return False
    return last_at is None or now - last_at >= PREVIEW_INTERVAL_SECONDS or progress.step >= progress.total


def jpeg_images(jpeg: bytes) -> list[Image.Image]:
    """A preview rendered elsewhere (a Ray replica) as StepProgress.preview returns one: a list of images."""
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return [image]


def capture_preview(job: Job, progress: StepProgress, clock: Callable[[], float] = time.monotonic) -> bool:
    """Render and store this step's preview on `job` when it asked for previews and the last one is old
    enough (the final step always gets one); True when a preview was stored."""
    now = clock()
    if not job.wants_previews or not preview_due(progress, job.preview_at, now):
        return False
    images = progress.preview()
    if not images:
        return False
    job.set_preview(progress.step, preview_jpeg(images), now)
    return True
