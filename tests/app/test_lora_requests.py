"""LoRAs through every door on the tiny real engine: queued requests each get the image of their own set,
bad LoRAs are refused with the engine's report, and the exported snippet reproduces a two-LoRA form."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from app.ui.export import snippets_for
from app.metadata import read_recipe
from live_server import LiveServer
from model.request import GenerationRequest, LoraSpec

REQUEST = dict(prompt="a paper lantern 灯笼", seed=5, width=128, height=128, steps=2)
FORM = dict(prompt=REQUEST["prompt"], negative_prompt="", guidance=0.0, steps=2, seed=5, width=128, height=128,
            batch_size=1, reference_image=None, strength=0.6, shift=3.0, cfg_truncation=1.0, cfg_normalization=0.0,
            lora_1="", lora_1_scale=1.0, lora_2="", lora_2_scale=1.0, lora_3="", lora_3_scale=1.0)
REST_SET = (("ink", 0.8), ("glow", -0.5))
GRADIO_SET = (("glow", 1.5), ("ink", 0.3))
# Slot 2 stays empty: empty slots are skipped, the order of the filled ones is kept.
GRADIO_FORM = {**FORM, "lora_1": "glow", "lora_1_scale": 1.5, "lora_3": "ink", "lora_3_scale": 0.3}


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer):
    client = Client(tiny_server.url + "/", verbose=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(direct_engine, tiny_loras) -> dict[str, np.ndarray]:
    """What Engine.generate gives directly for each LoRA set (same model, seed and size as the requests)."""
    def image(*pairs: tuple[str, float]) -> np.ndarray:
        specs = tuple(LoraSpec(str(tiny_loras[name]), scale, name) for name, scale in pairs)
        result = direct_engine.generate(GenerationRequest(**REQUEST, loras=specs))
        return np.asarray(result.images[0].convert("RGB"))

    import torch  # torch loads with the tiny model, not while collecting

    with torch.inference_mode():
        images = {"none": image(), "rest": image(*REST_SET), "gradio": image(*GRADIO_SET)}
    for first, second in (("none", "rest"), ("none", "gradio"), ("rest", "gradio")):
        # Otherwise "each request got its own set" would prove nothing.
        assert np.abs(images[first].astype(int) - images[second].astype(int)).mean() > 1.0, (first, second)
    return images


def rest_body(pairs: tuple[tuple[str, float], ...], **changes) -> dict:
    return {"prompt": REQUEST["prompt"], "size": "128x128", "steps": 2, "seed": 5,
            "loras": [{"name": name, "scale": scale} for name, scale in pairs], **changes}


def post(server: LiveServer, body: dict, language: str = "en") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/images/generations", json=body, headers={"accept-language": language},
                      timeout=300)


def rest_pixels(response: httpx.Response) -> np.ndarray:
    png = base64.b64decode(response.json()["data"][0]["b64_json"])
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def file_pixels_and_recipe(path: str) -> tuple[np.ndarray, dict]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), read_recipe(image)


def submit_and_wait_for_acceptance(server: LiveServer, start) -> None:
    before = server.metric("zimage_jobs_submitted_total")
    start()
    server.wait_until(lambda: server.metric("zimage_jobs_submitted_total") > before, timeout=60)


def test_queued_rest_and_gradio_jobs_each_get_their_own_lora_set(tiny_server: LiveServer, client: Client,
                                                                 expected: dict[str, np.ndarray]):
    responses: dict[str, httpx.Response] = {}
    blocker = threading.Thread(target=lambda: responses.update(
        blocker=post(tiny_server, {"prompt": "blocker", "size": "128x128", "steps": 40, "seed": 1})))
    rest = threading.Thread(target=lambda: responses.update(rest=post(tiny_server, rest_body(REST_SET))))
    submit_and_wait_for_acceptance(tiny_server, blocker.start)
    submit_and_wait_for_acceptance(tiny_server, rest.start)
    jobs = []
    submit_and_wait_for_acceptance(tiny_server, lambda: jobs.append(client.submit(**GRADIO_FORM,
                                                                                  api_name="/generate")))
    assert tiny_server.metric("zimage_queue_depth") == 2  # both wait behind the blocker

    _, images, _ = jobs[0].result(timeout=300)
    for thread in (blocker, rest):
        thread.join(timeout=300)
    assert responses["blocker"].status_code == 200 and responses["rest"].status_code == 200, responses["rest"].text
    assert np.array_equal(rest_pixels(responses["rest"]), expected["rest"])
    pixels, recipe = file_pixels_and_recipe(images[0]["image"])
    assert np.array_equal(pixels, expected["gradio"])
    assert [(l["name"], l["scale"]) for l in recipe["loras"]] == list(GRADIO_SET)


def test_bad_lora_is_refused_with_its_report_and_the_next_request_is_served(
        tiny_server: LiveServer, client: Client, expected: dict[str, np.ndarray]):
    import torch

    from tests.model.lora_writers import write

    folder = tiny_server.service.settings.lora_dir
    bad = write(folder / "sdxl-style.safetensors",
                {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    try:
        refused = post(tiny_server, rest_body((("ink", 0.8), ("sdxl-style", 1.0))), language="zh-CN")
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["code"] == "lora_rejected" and error["param"] == "loras"
        assert error["message"].startswith("无法应用该 LoRA") and "Stable Diffusion" in error["message"]
        with pytest.raises(AppError, match="could not be applied.*Stable Diffusion"):
            client.predict(**{**FORM, "lora_2": "sdxl-style"}, api_name="/generate")
    finally:
        bad.unlink()
    with pytest.raises(AppError, match="'glow' is chosen more than once"):
        client.predict(**{**GRADIO_FORM, "lora_2": "glow"}, api_name="/generate")
    with pytest.raises(AppError, match="'gone' was not found.*Available: glow, ink"):
        client.predict(**{**FORM, "lora_1": "gone"}, api_name="/generate")
    with pytest.raises(AppError, match="lora_3_scale must be between -4.0 and 4.0"):
        client.predict(**{**GRADIO_FORM, "lora_3_scale": 7.5}, api_name="/generate")

    served = post(tiny_server, rest_body(REST_SET))
    assert served.status_code == 200 and np.array_equal(rest_pixels(served), expected["rest"])


def test_exported_python_snippet_reproduces_a_two_lora_form(tiny_server: LiveServer, tiny_loras: dict[str, Path],
                                                            expected: dict[str, np.ndarray], tmp_path: Path):
    snippet = snippets_for(GRADIO_FORM, tiny_server.url).python
    # The snippet lists the filled slots first (the empty slot 2 of the form moves to the end).
    assert "lora_1='glow',\n    lora_1_scale=1.5,\n    lora_2='ink',\n    lora_2_scale=0.3,\n    lora_3=''," in snippet
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    pixels, recipe = file_pixels_and_recipe(run.stdout.strip().splitlines()[-1].split(" ")[0])
    assert np.array_equal(pixels, expected["gradio"])
    assert recipe["loras"] == [
        {"name": name, "scale": scale, "file": f"{name}.safetensors",
         "sha256": hashlib.sha256(tiny_loras[name].read_bytes()).hexdigest()} for name, scale in GRADIO_SET]
