"""REST control and mask fields (acceptance of issue 12's doors): decoded like `image`, resolved by name,
refused by field; on the fake engine for the checks and on the tiny real engine for a ControlNet image."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.metadata import read_recipe
from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running
from model.request import GenerationRequest

GENERATIONS = "/v1/images/generations"
NET = "union-2.1"


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server: LiveServer, body: dict) -> httpx.Response:
    return httpx.post(server.url + GENERATIONS, json={"size": "128x128", "steps": 1, **body}, timeout=120)


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    settings = make_settings(tmp_path_factory.mktemp("control-fake"))
    settings.controlnet_dir.mkdir(parents=True)
    (settings.controlnet_dir / f"{NET}.safetensors").write_bytes(b"a ControlNet file")
    with running(settings, FakeEngine) as live:
        yield live


def last_call(server: LiveServer) -> GenerationRequest:
    return server.service._engine.calls[-1]


def test_control_fields_reach_the_engine_with_the_net_resolved_by_name(fake_server: LiveServer):
    control = Image.new("RGB", (96, 64), (10, 200, 10))
    response = post(fake_server, {"prompt": "edges", "controlnet": NET, "control_image": b64(control),
                                  "control_mode": "canny", "control_scale": 0.9})
    assert response.status_code == 200, response.text
    request = last_call(fake_server)
    assert request.controlnet == str((fake_server.service.settings.controlnet_dir / f"{NET}.safetensors").resolve())
    assert request.control_image.size == (96, 64) and request.control_mode == "canny"
    assert request.control_scale == 0.9
    with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
        recipe = read_recipe(image)
    assert recipe["controlnet"] == NET and recipe["control_mode"] == "canny" and recipe["control_scale"] == 0.9
    assert str(fake_server.service.settings.controlnet_dir) not in response.text  # no server paths


def test_a_mask_reaches_the_engine_with_its_reference(fake_server: LiveServer):
    reference = Image.new("RGB", (128, 128), (200, 30, 30))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    response = post(fake_server, {"prompt": "inpaint", "image": b64(reference), "mask": b64(mask)})
    assert response.status_code == 200, response.text
    request = last_call(fake_server)
    assert request.mask.size == (128, 128) and request.mask.convert("L").getpixel((64, 64)) == 255
    assert request.controlnet is None


def test_without_control_fields_nothing_changes(fake_server: LiveServer):
    assert post(fake_server, {"prompt": "plain"}).status_code == 200
    request = last_call(fake_server)
    assert (request.mask, request.controlnet, request.control_image) == (None, None, None)
    assert (request.control_mode, request.control_scale) == ("map", 0.75)


RED = Image.new("RGB", (128, 128), (200, 30, 30))
BAD_CONTROL = [
    ("mask of another size", {"image": b64(RED), "mask": b64(Image.new("L", (64, 64), 255))}, 400, "mask"),
    ("mask without image", {"mask": b64(Image.new("L", (128, 128), 255))}, 400, "mask"),
    ("mask not base64", {"image": b64(RED), "mask": "not base64!"}, 400, "mask"),
    ("mask not an image", {"image": b64(RED), "mask": base64.b64encode(b"GIF89a-nope").decode()}, 400, "mask"),
    ("control image without controlnet", {"control_image": b64(RED)}, 400, "control_image"),
    ("control image too many pixels", {"controlnet": NET, "control_image": b64(Image.new("RGB", (1100, 1000)))},
     400, "control_image"),
    ("unknown controlnet", {"controlnet": "absent", "control_image": b64(RED)}, 400, "controlnet"),
    ("controlnet path traversal", {"controlnet": "../loras/x", "control_image": b64(RED)}, 400, "controlnet"),
    ("controlnet absolute path", {"controlnet": "/etc/passwd", "control_image": b64(RED)}, 400, "controlnet"),
    ("unknown mode", {"controlnet": NET, "control_image": b64(RED), "control_mode": "depth"}, 400, "control_mode"),
    ("scale out of range", {"controlnet": NET, "control_image": b64(RED), "control_scale": 5}, 400,
     "control_scale"),
    ("controlnet not a string", {"controlnet": 3}, 422, "controlnet"),
]


@pytest.mark.parametrize("case, body, status, param", BAD_CONTROL, ids=[case[0] for case in BAD_CONTROL])
def test_bad_control_input_names_the_field(fake_server: LiveServer, case, body, status, param):
    calls = len(fake_server.service._engine.calls)
    response = post(fake_server, {"prompt": "bad", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert str(fake_server.service.settings.controlnet_dir.parent) not in error["message"]  # no server paths
    assert len(fake_server.service._engine.calls) == calls  # refused before the engine ran


def test_unknown_controlnet_lists_the_available_names(fake_server: LiveServer):
    error = post(fake_server, {"prompt": "x", "controlnet": "absent"}).json()["error"]
    assert error["code"] == "controlnet_not_found" and f"Available: {NET}" in error["message"]


def test_tiny_controlnet_with_canny_through_rest_is_the_engines_image(tiny_server: LiveServer, tiny_model_dir: Path,
                                                                      direct_engine):
    import torch

    folder = tiny_server.service.settings.controlnet_dir
    folder.mkdir(parents=True, exist_ok=True)
    source = tiny_model_dir / "controlnet" / "tiny-controlnet-union-2.1.safetensors"
    shutil.copy(source, folder / "tiny-2.1.safetensors")
    control = Image.new("RGB", (128, 128), (0, 0, 0))
    control.paste((255, 255, 255), (40, 20, 90, 110))
    body = {"prompt": "a white bar", "size": "128x128", "steps": 2, "seed": 7, "controlnet": "tiny-2.1",
            "control_image": b64(control), "control_mode": "canny", "control_scale": 0.9}
    response = httpx.post(tiny_server.url + GENERATIONS, json=body, timeout=300)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
        served = np.asarray(image.convert("RGB")).astype(int)
        recipe = read_recipe(image)
    assert recipe["controlnet"] == "tiny-2.1" and recipe["control_mode"] == "canny"
    request = GenerationRequest(prompt="a white bar", width=128, height=128, steps=2, seed=7, control_image=control,
                                controlnet=str(folder / "tiny-2.1.safetensors"), control_mode="canny",
                                control_scale=0.9)
    with torch.inference_mode():
        direct = np.asarray(direct_engine.generate(request).images[0].convert("RGB")).astype(int)
        plain = np.asarray(direct_engine.generate(GenerationRequest(
            prompt="a white bar", width=128, height=128, steps=2, seed=7)).images[0].convert("RGB")).astype(int)
    assert np.abs(direct - plain).mean() > 0.5  # the ControlNet changes the image, so equality below means something
    assert np.array_equal(served, direct)
