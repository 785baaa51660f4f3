"""Gradio door on the tiny real engine: gradio_client, one shared queue with REST (acceptance 2, 3, 4)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.api import ImagesRequest
from app.ui.export import DEFAULTS as EXPORT_DEFAULTS
from app.ui.export import snippets_for
from app.metadata import read_recipe
from app.fields import DOOR_FIELDS, FIELD_BY_NAME
from app.validation import parse_size
from app.ui.choices import NO_CONTROLNET
from app_helpers import TEST_QUEUE_SIZE
from live_server import LiveServer
from model.request import GenerationRequest

FORM = dict(prompt="a lighthouse at dusk", negative_prompt="", guidance=0.0, steps=2, seed=11, width=128, height=128,
            batch_size=1, reference_image=None, strength=0.6, shift=3.0, cfg_truncation=1.0, cfg_normalization=0.0,
            lora_1="", lora_1_scale=1.0, lora_2="", lora_2_scale=1.0, lora_3="", lora_3_scale=1.0)


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer):
    client = Client(tiny_server.url + "/", verbose=False)
    yield client
    client.close()


def test_gradio_client_gets_images_with_seed_and_recipe(client: Client):
    status, images, details = client.predict(**{**FORM, "batch_size": 2}, api_name="/generate")
    assert "11, 12" in status
    assert [item["caption"] for item in images] == ["seed 11", "seed 12"]
    with Image.open(images[1]["image"]) as image:
        recipe = read_recipe(image)
    assert recipe["seed"] == 12 and recipe["prompt"] == FORM["prompt"] and recipe["width"] == 128
    assert details["seeds"] == [11, 12] and set(details["timings"]) >= {"denoising", "vae_decode", "queue_wait"}


def test_every_door_leaves_a_field_out_as_the_engine_would(tiny_server: LiveServer, client: Client):
    """The form's initial values, the REST body's defaults and the exported code's: the engine's defaults
    (GenerationRequest), except the seed, which every door draws per request (-1). The form's size sliders
    start at the default size brought into the server's allowed range."""
    engine = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    expected = {name: engine[name] for name in DOOR_FIELDS} | {"seed": -1}
    settings = tiny_server.service.settings
    allowed = {axis: min(max(expected[axis], settings.min_size), settings.max_size) for axis in ("width", "height")}
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    form = {p["parameter_name"]: p["parameter_default"] for p in endpoint["parameters"] if p["parameter_has_default"]}
    on_form = {name: value for name, value in (expected | allowed).items() if FIELD_BY_NAME[name].form}
    # The ControlNet dropdown's "none" choice is "" (a dropdown value cannot be None); the handler reads it as None.
    assert form["controlnet"] == NO_CONTROLNET
    assert {name: form.get(name) for name in on_form} == on_form | {"controlnet": NO_CONTROLNET}
    rest = ImagesRequest(prompt="x")
    width, height = parse_size(rest.size)
    by_rest_name = {name: getattr(rest, FIELD_BY_NAME[name].rest) for name in expected if FIELD_BY_NAME[name].rest}
    assert by_rest_name | {"width": width, "height": height} == expected
    assert {name: EXPORT_DEFAULTS[name] for name in expected} == expected


def test_gradio_bad_inputs_get_our_message(client: Client, tmp_path):
    with pytest.raises(AppError, match="The prompt is empty"):
        client.predict(**{**FORM, "prompt": "   "}, api_name="/generate")
    with pytest.raises(AppError, match="multiple of 16 between 128 and 512"):
        client.predict(**{**FORM, "width": 1000}, api_name="/generate")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is text, not a PNG")
    with pytest.raises(AppError, match="not an image"):
        client.predict(**{**FORM, "reference_image": handle_file(str(not_an_image))}, api_name="/generate")
    status, images, _ = client.predict(**FORM, api_name="/generate")
    assert images and "Done" in status


def test_gradio_upload_over_the_size_limit_is_refused(tiny_server: LiveServer):
    limit = tiny_server.service.settings.max_upload_bytes
    files = {"files": ("huge.png", b"\0" * (limit + 1), "image/png")}
    response = httpx.post(f"{tiny_server.url}/gradio_api/upload", files=files, timeout=60)
    assert response.status_code == 413 and str(limit) in response.text


def test_gradio_run_shortcut_cannot_bypass_the_queue(tiny_server: LiveServer):
    response = httpx.post(f"{tiny_server.url}/gradio_api/run/generate", json={"data": list(FORM.values())})
    assert response.status_code == 404


def test_gradio_client_cancel_stops_our_job(tiny_server: LiveServer, client: Client):
    cancelled = 'zimage_jobs_total{outcome="cancelled"}'
    before = tiny_server.metric(cancelled)
    job = client.submit(**{**FORM, "steps": 50}, api_name="/generate")
    tiny_server.wait_until(lambda: tiny_server.metric("zimage_jobs_running") == 1, timeout=60)
    assert job.cancel()
    tiny_server.wait_until(lambda: tiny_server.metric(cancelled) == before + 1, timeout=60)
    assert tiny_server.metric("zimage_jobs_running") == 0


def rest_body(seed: int, steps: int = 2) -> dict:
    return {"prompt": f"job {seed}", "size": "128x128", "steps": steps, "seed": seed}


def test_six_concurrent_rest_and_gradio_jobs_share_one_queue(tiny_server: LiveServer, client: Client):
    results: dict[int, dict] = {}
    threads: list[threading.Thread] = []

    def rest_job(seed: int, steps: int = 2) -> None:
        response = httpx.post(f"{tiny_server.url}/v1/images/generations", json=rest_body(seed, steps), timeout=300)
        assert response.status_code == 200, response.text
        results[seed] = response.json()["job"]

    def submit_and_wait_for_acceptance(start) -> None:
        before = tiny_server.metric("zimage_jobs_submitted_total")
        start()
        tiny_server.wait_until(lambda: tiny_server.metric("zimage_jobs_submitted_total") > before, timeout=60)

    # A long job occupies the worker, so the six below all wait in the queue behind it.
    blocker = threading.Thread(target=rest_job, args=(100, 50))
    submit_and_wait_for_acceptance(blocker.start)
    gradio_jobs = {}
    for seed in range(6):
        if seed % 2:
            submit_and_wait_for_acceptance(
                lambda s=seed: gradio_jobs.__setitem__(s, client.submit(**{**FORM, "seed": s}, api_name="/generate")))
        else:
            thread = threading.Thread(target=rest_job, args=(seed,))
            threads.append(thread)
            submit_and_wait_for_acceptance(thread.start)
    assert tiny_server.metric("zimage_queue_depth") == TEST_QUEUE_SIZE

    # The queue is full: REST gets 429, Gradio the busy message.
    overflow = httpx.post(f"{tiny_server.url}/v1/images/generations", json=rest_body(99), timeout=60)
    assert overflow.status_code == 429 and overflow.json()["error"]["code"] == "queue_full"
    with pytest.raises(AppError, match="busy"):
        client.predict(**{**FORM, "seed": 98}, api_name="/generate")

    for seed, job in gradio_jobs.items():
        _, images, details = job.result(timeout=300)
        assert images[0]["caption"] == f"seed {seed}"
        results[seed] = details["job"]
    for thread in [blocker, *threads]:
        thread.join(timeout=300)
    assert sorted(results) == [0, 1, 2, 3, 4, 5, 100]

    ordered = [results[100]] + [results[seed] for seed in range(6)]
    for earlier, later in zip(ordered, ordered[1:]):
        assert earlier["finished_at"] <= later["started_at"]  # one at a time, in submission order
    for job in ordered:
        # Position reported at submit = jobs submitted before it that had not finished yet.
        ahead = sum(1 for other in ordered
                    if other["submitted_at"] < job["submitted_at"] < other["finished_at"])
        assert job["queue_position"] == ahead


def completed_gradio_recipe(event_stream: str) -> dict:
    """The recipe of the first image in a finished two-step Gradio call's output (a file of this machine)."""
    data = event_stream.split("event: complete", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    with Image.open(json.loads(data)[1][0]["image"]["path"]) as image:
        return read_recipe(image)


@pytest.mark.slow  # runs the snippets in bash / fresh python processes
@pytest.mark.parametrize("reference", [False, True], ids=["text-only", "with-reference"])
def test_exported_shell_and_openai_snippets_run_against_the_server(tiny_server: LiveServer, tiny_loras, tmp_path,
                                                                  reference):
    Image.new("RGB", (96, 96), (240, 200, 10)).save(tmp_path / "reference.png")
    recipe = {**FORM, "prompt": "it's a \"sign\" saying 你好 $HOME", "seed": 31, "reference_image": reference,
              "lora_1": "ink", "lora_1_scale": 0.8, "lora_3": "glow", "lora_3_scale": -0.5}
    lora_set = [("ink", 0.8), ("glow", -0.5)]
    snippets = snippets_for(recipe, tiny_server.url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    gradio_run = subprocess.run(["bash", "-c", snippets.curl_gradio], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, env=env)
    assert gradio_run.returncode == 0, gradio_run.stderr
    assert "event: complete" in gradio_run.stdout and "seed 31" in gradio_run.stdout
    assert [(l["name"], l["scale"]) for l in completed_gradio_recipe(gradio_run.stdout)["loras"]] == lora_set

    for name, command in (("curl_rest", ["bash", "-c", snippets.curl_rest]),
                          ("openai", [sys.executable, "-c", snippets.openai])):
        (tmp_path / "z-image-0.png").unlink(missing_ok=True)
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, (name, run.stderr)
        with Image.open(tmp_path / "z-image-0.png") as image:
            recipe_back = read_recipe(image)
        assert recipe_back["seed"] == 31 and recipe_back["prompt"] == recipe["prompt"], name
        assert bool(recipe_back["reference_image"]) == reference, name
        assert [(l["name"], l["scale"]) for l in recipe_back["loras"]] == lora_set, name
