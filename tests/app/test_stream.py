"""REST progress stream (server-sent events) on the tiny real engine: steps, previews, result, errors, hang-up."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
from PIL import Image

from app.metadata import read_recipe
from live_server import LiveServer

STREAM = "/v1/images/generations/stream"
BODY = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 8, "seed": 21}


def read_events(response: httpx.Response):
    """(event, data) pairs of a server-sent event stream, as they arrive."""
    event, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])
        elif not line and event:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def stream(server: LiveServer, body: dict, preview: bool) -> list[tuple[str, dict]]:
    params = {"preview": "true"} if preview else {}
    with httpx.stream("POST", server.url + STREAM, json=body, params=params, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return list(read_events(response))


def pixels(b64_png: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        return np.asarray(image.convert("RGB"))


def test_stream_reports_every_step_with_jpeg_previews_then_the_same_image_as_the_normal_endpoint(
        tiny_server: LiveServer):
    events = stream(tiny_server, BODY, preview=True)
    names = [name for name, _ in events]
    assert names[-1] == "result" and "error" not in names
    progress = [data for name, data in events if name == "progress"]
    assert [event["step"] for event in progress] == sorted({event["step"] for event in progress})
    assert progress[-1] == {**progress[-1], "step": 8, "total": 8}
    previews = [event for event in progress if "preview" in event]
    # 0.1 s per step (the debug delay) and at most one preview per 0.3 s: a few, not one per step.
    assert 2 <= len(previews) < 8
    for event in previews:
        with Image.open(io.BytesIO(base64.b64decode(event["preview"]))) as image:
            assert image.format == "JPEG" and max(image.size) <= 256 and image.size == (16, 16)
    result = events[-1][1]
    with Image.open(io.BytesIO(base64.b64decode(result["data"][0]["b64_json"]))) as image:
        assert read_recipe(image)["seed"] == 21
    normal = httpx.post(tiny_server.url + "/v1/images/generations", json=BODY, timeout=120).json()
    assert np.array_equal(pixels(result["data"][0]["b64_json"]), pixels(normal["data"][0]["b64_json"]))
    assert result["seeds"] == normal["seeds"] == [21]


def test_no_previews_unless_asked(tiny_server: LiveServer):
    events = stream(tiny_server, {**BODY, "steps": 3}, preview=False)
    progress = [data for name, data in events if name == "progress"]
    assert progress and all("preview" not in event for event in progress)
    assert events[-1][0] == "result"


def test_bad_input_is_a_plain_openai_error_before_any_event(tiny_server: LiveServer):
    response = httpx.post(tiny_server.url + STREAM, json={**BODY, "sampler": "heun"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "sampler" and "euler" in error["message"]


def test_a_job_stopped_mid_stream_ends_with_an_error_event(tiny_server: LiveServer):
    with httpx.stream("POST", tiny_server.url + STREAM, json={**BODY, "steps": 50}, timeout=120) as response:
        events = read_events(response)
        for name, _ in events:
            if name == "progress":
                break
        job = tiny_server.service._running
        tiny_server.service.cancel(job)
        rest = list(events)
    assert rest[-1][0] == "error" and rest[-1][1]["status"] == 499
    assert rest[-1][1]["error"]["message"] == "Generation stopped."


def test_a_stream_client_that_hangs_up_cancels_its_job(tiny_server: LiveServer):
    cancelled = 'zimage_jobs_total{outcome="cancelled"}'
    before = tiny_server.metric(cancelled)
    with httpx.stream("POST", tiny_server.url + STREAM, json={**BODY, "steps": 50}, timeout=120) as response:
        first = next(name for name, _ in read_events(response) if name == "progress")
    assert first == "progress" and tiny_server.service._running is not None
    tiny_server.wait_until(lambda: tiny_server.metric(cancelled) == before + 1, timeout=60)
    assert tiny_server.metric("zimage_jobs_running") == 0
