"""Recipes and exported snippets carry the ControlNet (by name), its mode and scale, and the mask / control image
(as summaries in the recipe, as mask.png / control.png next to the snippet)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.metadata import build_recipe, encode_png, parameters_text, read_recipe
from app.ui.export import snippets_for
from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running
from model.request import GenerationRequest

SERVER_NET = "/srv/secret/controlnets/union-2.1.safetensors"


def images() -> dict[str, Image.Image]:
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (16, 16, 64, 64))
    return {"reference_image": Image.new("RGB", (128, 128), (200, 30, 30)), "mask": mask,
            "control_image": Image.new("RGB", (96, 64), (0, 255, 0))}


def control_request(**changes) -> GenerationRequest:
    values = dict(prompt="a gate", width=128, height=128, steps=2, seed=3, controlnet=SERVER_NET,
                  control_mode="canny", control_scale=0.9, **images())
    values.update(changes)
    return GenerationRequest(**values)


def recipe_of(request: GenerationRequest) -> dict:
    reference = {"used": True} if request.reference_image is not None else None
    return build_recipe(request, request.seed, 0, {}, [], reference, {})


def test_recipe_records_the_controlnet_by_name_and_the_images_as_summaries():
    recipe = recipe_of(control_request())
    assert (recipe["controlnet"], recipe["control_mode"], recipe["control_scale"]) == ("union-2.1", "canny", 0.9)
    assert recipe["mask"]["used"] and (recipe["mask"]["width"], recipe["mask"]["height"]) == (128, 128)
    assert (recipe["control_image"]["width"], recipe["control_image"]["height"]) == (96, 64)
    assert len(recipe["control_image"]["sha256"]) == 64 and recipe["mask"]["sha256"] != recipe["control_image"]["sha256"]
    assert "/srv" not in json.dumps(recipe)  # the server's path never leaves it
    text = parameters_text(recipe)
    assert 'ControlNet: "Module: canny, Model: union-2.1, Weight: 0.9"' in text and "Inpaint: mask" in text
    with Image.open(io.BytesIO(encode_png(Image.new("RGB", (8, 8)), recipe))) as image:
        assert read_recipe(image) == recipe


def test_without_a_controlnet_its_settings_are_not_recorded():
    recipe = recipe_of(GenerationRequest(prompt="plain"))
    assert {key: recipe[key] for key in ("controlnet", "control_mode", "control_scale", "mask", "control_image")} \
        == dict.fromkeys(("controlnet", "control_mode", "control_scale", "mask", "control_image"))
    assert "ControlNet" not in parameters_text(recipe) and "Inpaint" not in parameters_text(recipe)


def test_snippets_without_control_have_no_control_fields():
    snippets = snippets_for(recipe_of(GenerationRequest(prompt="plain")), "http://127.0.0.1:1")
    for text in (snippets.curl_rest, snippets.openai):
        assert "control" not in text and "mask" not in text
    # The Gradio endpoint takes every parameter: the unused ones are sent empty, no files are named.
    assert "mask=None," in snippets.python and "controlnet=None," in snippets.python
    assert "control_image=None," in snippets.python and ".png" not in snippets.python
    assert "gradio_api/upload" not in snippets.curl_gradio


def write_inputs(folder: Path) -> None:
    for name, file in (("reference_image", "reference.png"), ("mask", "mask.png"), ("control_image", "control.png")):
        images()[name].save(folder / file)


def test_curl_snippets_send_the_files_next_to_them(tmp_path: Path):
    snippets = snippets_for(recipe_of(control_request()), "http://127.0.0.1:1")
    for shell in (snippets.curl_rest, snippets.curl_gradio):
        subprocess.run(["bash", "-n"], input=shell, text=True, check=True)
    for file in ("reference.png", "mask.png", "control.png"):  # each uploaded, then named by its upload path
        assert f'-F "files=@{file}" "$URL/gradio_api/upload"' in snippets.curl_gradio, file
    write_inputs(tmp_path)
    fake_curl = tmp_path / "curl"  # keeps the body it is given on stdin (-d @-), answers with no images
    fake_curl.write_text('#!/bin/bash\ncat > sent.json\necho \'{"data": []}\'\n')
    fake_curl.chmod(0o755)
    subprocess.run(["bash", "-c", snippets.curl_rest], capture_output=True, text=True, cwd=tmp_path,
                   env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=True)
    body = json.loads((tmp_path / "sent.json").read_text())
    assert (body["controlnet"], body["control_mode"], body["control_scale"]) == ("union-2.1", "canny", 0.9)
    for rest, file in (("image", "reference.png"), ("mask", "mask.png"), ("control_image", "control.png")):
        assert base64.b64decode(body[rest]) == (tmp_path / file).read_bytes(), rest


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    settings = make_settings(tmp_path_factory.mktemp("control-recipes"))
    settings.controlnet_dir.mkdir(parents=True)
    (settings.controlnet_dir / "union-2.1.safetensors").write_bytes(b"a ControlNet file")
    with running(settings, FakeEngine) as live:
        yield live


@pytest.mark.parametrize("kind", ["openai", "python"])  # the openai SDK and gradio_client snippets
def test_exported_snippet_sends_the_same_control_request(fake_server: LiveServer, tmp_path: Path, kind: str):
    snippet = getattr(snippets_for(recipe_of(control_request()), fake_server.url), kind)
    write_inputs(tmp_path)
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    sent = fake_server.service._engine.calls[-1]
    assert Path(sent.controlnet).name == "union-2.1.safetensors"
    assert (sent.control_mode, sent.control_scale, sent.seed, sent.steps) == ("canny", 0.9, 3, 2)
    for name, image in images().items():
        assert np.array_equal(np.asarray(getattr(sent, name).convert("RGB")), np.asarray(image.convert("RGB"))), name
