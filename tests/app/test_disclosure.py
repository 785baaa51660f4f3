"""Clients never see the server's absolute paths or OS error texts (issue 11, security 4); the log keeps them."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from PIL import Image

from app.ui.export import GRADIO_PARAMETERS
from app.metadata import read_recipe
from app.redaction import public_path, redact
from app_helpers import gradio_form, make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running

FORM = gradio_form(prompt="a quiet harbour", steps=2, seed=9, width=128, height=128)
SECRET_FILE = "/srv/secret-place/weights/ae.safetensors"


def test_ready_and_image_recipes_name_the_weights_folder_without_its_absolute_path(tiny_server: LiveServer):
    weights = tiny_server.service.settings.weights_dir.resolve()
    ready = httpx.get(tiny_server.url + "/health/ready")
    assert ready.status_code == 200 and str(weights) not in ready.text
    assert ready.json()["model"]["path"] == public_path(weights)
    response = httpx.post(tiny_server.url + "/v1/images/generations", timeout=120,
                          json={"prompt": "p", "size": "128x128", "steps": 1})
    assert response.status_code == 200 and str(weights) not in response.text
    png = base64.b64decode(response.json()["data"][0]["b64_json"])
    with Image.open(io.BytesIO(png)) as image:
        assert str(weights) not in repr(read_recipe(image))


def test_missing_weights_are_explained_without_the_absolute_path(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from app.engine_loader import engine_factory

    missing = tmp_path / "no-weights-here"
    settings = make_settings(tmp_path, weights_dir=missing)
    with caplog.at_level(logging.ERROR), running(settings, engine_factory(settings)) as server:
        ready = httpx.get(server.url + "/health/ready")
        rest = httpx.post(server.url + "/v1/images/generations", json={"prompt": "x", "size": "128x128"})
    for response in (ready, rest):
        assert response.status_code == 503 and str(tmp_path) not in response.text
        assert "no-weights-here" in response.text  # still tells the operator which folder it is
    assert str(missing) in caplog.text  # the full path is in the server log


def test_load_errors_lose_their_paths_and_errno(tmp_path: Path):
    def broken():
        raise FileNotFoundError(2, "No such file or directory", SECRET_FILE)

    with running(make_settings(tmp_path), broken) as server:
        message = httpx.get(server.url + "/health/ready").json()["message"]
    assert "/srv/secret-place" not in message and "[Errno" not in message
    assert "No such file or directory" in message and "ae.safetensors" in message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with running(make_settings(tmp_path_factory.mktemp("disclosure")), FakeEngine) as live:
        yield live


def test_lora_not_found_names_the_folder_without_its_absolute_path(server: LiveServer):
    lora_dir = server.service.settings.lora_dir
    response = httpx.post(server.url + "/v1/images/generations",
                          json={"prompt": "x", "size": "128x128", "loras": [{"name": "absent"}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "lora_not_found"
    assert str(lora_dir) not in response.text and str(lora_dir.parent) not in response.text
    assert f"in {lora_dir.name}" in response.json()["error"]["message"]


def test_gradio_details_list_output_files_relative_to_the_output_folder(server: LiveServer):
    output_dir = server.service.settings.output_dir
    client = Client(server.url + "/", verbose=False)
    try:
        _, _, details = client.predict(**dict(zip(GRADIO_PARAMETERS, FORM)), api_name="/generate")
    finally:
        client.close()
    files = details["files"]
    assert files and all(not Path(name).is_absolute() and str(output_dir) not in name for name in files)
    assert all((output_dir / name).is_file() for name in files)


def test_unexpected_exception_texts_do_not_reach_gradio_clients(server: LiveServer, monkeypatch: pytest.MonkeyPatch):
    def broken_submit(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", SECRET_FILE)

    monkeypatch.setattr(server.service, "submit", broken_submit)
    event_id = httpx.post(server.url + "/gradio_api/call/generate", json={"data": FORM}).json()["event_id"]
    stream = httpx.get(f"{server.url}/gradio_api/call/generate/{event_id}", timeout=30).text
    assert "event: error" in stream
    assert "/srv/secret-place" not in stream and "Errno" not in stream


def test_redact_keeps_the_message_and_drops_locations():
    text = f"FileNotFoundError: [Errno 2] No such file or directory: '{SECRET_FILE}'"
    assert redact(text) == "FileNotFoundError: No such file or directory: 'ae.safetensors'"
    assert redact("/opt/loras/x.safetensors: LoRA file cannot be opened (Permission denied)") == \
        "x.safetensors: LoRA file cannot be opened (Permission denied)"
    for kept in ("step 1/2 of 3; shape [4, 16]", "see https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/tree/main"):
        assert redact(kept) == kept
    assert public_path(Path.cwd() / "weights") == "weights" and public_path("/elsewhere/loras") == "loras"
