"""Live previews in the service: JPEG, small, throttled, only for doors that ask and only with the setting on."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from app.jobs import Job
from app.previews import PREVIEW_INTERVAL_SECONDS, capture_preview, preview_jpeg
from fake_engine import FakeEngine, estimate_colour
from model.request import GenerationRequest, StepProgress
from test_service import small_request, started_service


def progress(step: int, total: int = 8, calls: list | None = None) -> StepProgress:
    def render():
        if calls is not None:
            calls.append(step)
        return [Image.new("RGB", (128, 64), (step * 20, 0, 0))]
    return StepProgress(step=step, total=total, sigma=0.5, preview=render)


def test_preview_is_a_small_jpeg_strip_of_the_batch():
    data = preview_jpeg([Image.new("RGB", (128, 128), "red"), Image.new("RGB", (128, 128), "blue")])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (256, 128)
        left, right = image.getpixel((10, 64)), image.getpixel((240, 64))
    assert left[0] > 200 and right[2] > 200


def test_previews_are_throttled_and_rendered_only_when_due():
    job = Job(request=GenerationRequest(prompt="x"), door="test", wants_previews=True)
    calls: list[int] = []
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    assert capture_preview(job, progress(1, calls=calls), clock) and job.preview_step == 1
    now[0] += PREVIEW_INTERVAL_SECONDS / 2
    assert not capture_preview(job, progress(2, calls=calls), clock)
    now[0] += PREVIEW_INTERVAL_SECONDS / 2
    assert capture_preview(job, progress(3, calls=calls), clock) and job.preview_step == 3
    assert capture_preview(job, progress(8, calls=calls), clock)  # the last step always shows
    assert calls == [1, 3, 8]  # nothing is rendered for a skipped step


def test_no_preview_is_rendered_for_a_door_that_did_not_ask():
    job = Job(request=GenerationRequest(prompt="x"), door="test")
    calls: list[int] = []
    assert not capture_preview(job, progress(1, calls=calls)) and calls == [] and job.preview is None


@pytest.mark.parametrize("setting", [True, False])
def test_the_previews_setting_turns_them_off(tmp_path: Path, setting: bool):
    service = started_service(tmp_path, FakeEngine(), previews=setting)
    try:
        job = service.submit(small_request(steps=3, seed=300), door="test", previews=True)
        assert job.wait(30)
    finally:
        service.shutdown(1.0)
    if not setting:
        assert job.preview is None
        return
    assert job.preview_step == 3  # the last step's preview, the fake engine's estimate of that step
    with Image.open(io.BytesIO(job.preview)) as image:
        assert image.format == "JPEG" and image.size == (16, 16)
        assert max(abs(a - b) for a, b in zip(image.getpixel((8, 8)), estimate_colour(300, 3, 3))) <= 3
