"""Hostile REST bodies against the tiny real server: each gets a clear 4xx naming the field, the server keeps
serving, and a huge body is refused without stalling the event loop (/health/live keeps answering)."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, start_server

GENERATIONS = "/v1/images/generations"
HEADERS = {"Content-Type": "application/json"}


def post_raw(server: LiveServer, content: bytes) -> httpx.Response:
    return httpx.post(server.url + GENERATIONS, content=content, headers=HEADERS, timeout=120)


def png_base64(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HOSTILE = [
    ("deeply nested body", b'{"prompt": "a", "loras": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     400, "invalid_json", "body"),
    ("deeply nested field", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "invalid_json", "body"),
    ("5000-digit integer", b'{"prompt": "a", "seed": ' + b"7" * 5000 + b"}", 422, "wrong_type", "seed"),
    ("5000-digit float field", b'{"prompt": "a", "guidance_scale": ' + b"7" * 5000 + b"}",
     400, "out_of_range", "guidance_scale"),
    ("lone surrogate in prompt", b'{"prompt": "a \\ud800 b", "size": "128x128"}', 400, "text_not_unicode", "prompt"),
    ("lone surrogate in negative prompt", b'{"prompt": "a", "negative_prompt": "\\udfff", "size": "128x128"}',
     400, "text_not_unicode", "negative_prompt"),
    ("data URL without comma", b'{"prompt": "a", "image": "data:image/png;base64"}', 400, "bad_base64", "image"),
    ("negative prompt over the character limit",
     b'{"prompt": "a", "size": "128x128", "negative_prompt": "' + b"x" * 20001 + b'"}',
     400, "negative_prompt_too_many_chars", "negative_prompt"),
    ("negative prompt over the token limit with CFG",
     b'{"prompt": "a", "size": "128x128", "guidance_scale": 2, "negative_prompt": "' + b"blur " * 2000 + b'"}',
     400, "negative_prompt_too_long", "negative_prompt"),
    ("more LoRAs than allowed", b'{"prompt": "a", "loras": [' + b",".join([b'{"name": "x"}'] * 50) + b"]}",
     400, "out_of_range", "loras"),
    ("reference image 1x400 at 256x256",
     ('{"prompt": "a", "size": "256x256", "image": "%s"}' % png_base64(1, 400)).encode(),
     400, "reference_aspect", "image"),
]


@pytest.mark.parametrize("case, content, status, code, param", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_body_gets_a_clear_error_naming_the_field(tiny_server: LiveServer, case, content, status, code,
                                                          param):
    response = post_raw(tiny_server, content)
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert len(error["message"]) < 1000


def test_a_huge_size_value_is_not_echoed_back(tiny_server: LiveServer):
    response = post_raw(tiny_server, b'{"prompt": "a", "size": "' + b"9" * 2_000_000 + b'"}')
    assert response.status_code == 400 and response.json()["error"]["code"] == "size_format"
    assert len(response.content) < 2000 and "2000000 characters" in response.json()["error"]["message"]


def test_the_server_serves_after_every_hostile_body(tiny_server: LiveServer):
    for _, content, *_ in HOSTILE:
        post_raw(tiny_server, content)
    response = httpx.post(tiny_server.url + GENERATIONS, json={"prompt": "still here", "size": "128x128",
                                                               "steps": 1, "seed": 4}, timeout=120)
    assert response.status_code == 200 and response.json()["seeds"] == [4]


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """A server on the fake engine with the default 20 MiB upload limit (bodies up to ~27 MB) and a queue of 1."""
    settings = make_settings(tmp_path_factory.mktemp("busy"), queue_size=1, max_upload_bytes=20 * 1024 * 1024)
    live = start_server(settings, lambda: FakeEngine(step_seconds=0.3))
    live.wait_ready()
    yield live
    live.stop()


def test_a_body_of_two_million_loras_is_refused_while_health_live_keeps_answering(busy_server: LiveServer):
    body = b'{"prompt": "a", "loras": [' + b",".join([b'{"name":"x"}'] * 2_000_000) + b"]}"
    assert len(body) > 25_000_000
    answer: dict[str, httpx.Response] = {}
    poster = threading.Thread(target=lambda: answer.update(response=post_raw(busy_server, body)))
    poster.start()
    slowest = 0.0
    with httpx.Client(timeout=30) as client:
        while poster.is_alive():
            started = time.perf_counter()
            assert client.get(busy_server.url + "/health/live").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
    poster.join()
    assert slowest < 2.0, f"/health/live took {slowest:.1f} s while the body was parsed"
    error = answer["response"].json()["error"]
    assert answer["response"].status_code == 400 and error["param"] == "body" and error["code"] == "body_too_complex"


def test_queue_full_answers_429_with_retry_after(busy_server: LiveServer):
    url = busy_server.url + GENERATIONS
    body = {"prompt": "busy", "size": "128x128", "steps": 20}
    threads = [threading.Thread(target=httpx.post, args=(url,), kwargs={"json": body, "timeout": 60})
               for _ in range(2)]
    for thread in threads:  # one runs, one waits: the queue (size 1) is full
        thread.start()
        time.sleep(0.5)
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
    assert int(response.headers["Retry-After"]) > 0
    for thread in threads:
        thread.join(60)
