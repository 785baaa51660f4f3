"""Client-named files (issue 11, security 1): only Gradio's own uploads are read, over the real HTTP API."""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from PIL import Image

from app.errors import ServiceError
from app.ui.export import GRADIO_PARAMETERS
from app.service import GenerationService
from app.ui.handlers import UiHandlers
from app.uploads import check_file_references, file_references, trusted_upload, upload_root
from app_helpers import gradio_form, make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running

FILE_META = {"_type": "gradio.FileData"}
# The /generate endpoint's positional inputs, in GRADIO_PARAMETERS order.
FORM = gradio_form(prompt="a red door", steps=2, seed=5, width=128, height=128)
REFERENCE = GRADIO_PARAMETERS.index("reference_image")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with running(make_settings(tmp_path_factory.mktemp("uploads")), FakeEngine) as live:
        yield live


def png_bytes(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def call_generate(server: LiveServer, reference) -> httpx.Response:
    data = list(FORM)
    data[REFERENCE] = reference
    return httpx.post(f"{server.url}/gradio_api/call/generate", json={"data": data}, timeout=10)


def event_stream(server: LiveServer, event_id: str) -> str:
    return httpx.get(f"{server.url}/gradio_api/call/generate/{event_id}", timeout=60).text


def assert_refused(response: httpx.Response, field: str = f"data[{REFERENCE}]") -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "untrusted_file" and body["error"]["param"] == field
    assert "must be a file uploaded to this server" in body["error"]["message"]
    assert body["detail"][0]["parameter_name"] == field  # Gradio's validation shape: client and page show it


@pytest.mark.parametrize("reference", [
    {"path": "/etc/passwd", "meta": FILE_META},
    {"path": "/etc/passwd"},
    {"path": "/dev/zero", "meta": FILE_META},
    {"path": "/dev/zero"},
    {"path": "../../../../etc/passwd", "meta": FILE_META},
    {"path": "https://example.com/cat.png", "meta": FILE_META},
], ids=["passwd", "passwd-no-meta", "dev-zero", "dev-zero-no-meta", "relative", "url"])
def test_server_paths_are_refused_fast_and_the_server_stays_responsive(server: LiveServer, reference):
    started = time.monotonic()
    created_after = time.time() - 1
    assert_refused(call_generate(server, reference))
    assert time.monotonic() - started < 5
    assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200
    # Nothing was copied into Gradio's cache, so nothing can be served back from it.
    copies = [p for p in upload_root().rglob("passwd") if p.stat().st_ctime >= created_after]
    assert copies == []
    assert httpx.get(f"{server.url}/gradio_api/file=/etc/passwd").status_code == 403


def test_file_route_serves_no_outside_or_remote_file(server: LiveServer):
    assert httpx.get(f"{server.url}/gradio_api/file=/etc/passwd").status_code == 403
    remote = httpx.get(f"{server.url}/gradio_api/file=http://169.254.169.254/latest/meta-data")
    assert remote.status_code == 403 and remote.json()["error"]["code"] == "untrusted_file"


def test_a_symlink_in_the_upload_folder_pointing_outside_is_refused(server: LiveServer, tmp_path: Path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    folder = upload_root() / f"zimage-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    link = folder / "ref.png"
    link.symlink_to(outside)
    try:
        assert_refused(call_generate(server, {"path": str(link), "meta": FILE_META}))
        assert_refused(call_generate(server, {"path": str(link)}))
    finally:
        link.unlink()
        folder.rmdir()


def test_a_genuine_upload_is_still_used(server: LiveServer):
    uploaded = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("ref.png", png_bytes(), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    before = len(server.service._engine.calls)
    response = call_generate(server, {"path": path, "meta": FILE_META})
    assert response.status_code == 200, response.text
    stream = event_stream(server, response.json()["event_id"])
    assert "event: complete" in stream, stream
    request = server.service._engine.calls[before]
    assert request.reference_image is not None and request.reference_image.size == (64, 64)


def test_gradio_client_uploads_work_and_server_paths_are_refused(server: LiveServer, tmp_path: Path):
    reference = tmp_path / "ref.png"
    reference.write_bytes(png_bytes((10, 200, 10)))
    form = dict(zip(GRADIO_PARAMETERS, FORM))
    client = Client(server.url + "/", verbose=False)
    try:
        status, images, _ = client.predict(**{**form, "reference_image": handle_file(str(reference))},
                                           api_name="/generate")
        assert images and "Done" in status
        with pytest.raises(ValidationError, match="must be a file uploaded to this server"):
            client.predict(**{**form, "reference_image": {"path": "/etc/passwd"}}, api_name="/generate")
    finally:
        client.close()
    assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200


@pytest.fixture
def upload_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def test_trusted_upload_accepts_only_regular_files_inside_the_upload_folder(upload_dir: Path, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    good = upload_dir / "abc" / "ref.png"
    good.parent.mkdir()
    good.write_bytes(png_bytes())
    assert trusted_upload(str(good), "image") == good.resolve()
    fifo = upload_dir / "pipe.png"
    os.mkfifo(fifo)
    escape = upload_dir / "abc" / ".." / ".." / "outside.png"
    (tmp_path / "outside.png").write_bytes(png_bytes())
    for bad in (str(fifo), str(upload_dir / "abc"), str(upload_dir / "missing.png"), str(escape), "", None, 42,
                "/dev/zero", f"{good}\0.png", f"file://{good}"):
        with pytest.raises(ServiceError) as caught:
            trusted_upload(bad, "image")
        assert caught.value.key == "untrusted_file" and caught.value.field == "image"
    assert "refused image='/dev/zero'" in caplog.text  # the server log says what was asked for


def test_our_own_output_images_are_trusted_as_references_and_nothing_else_there(upload_dir: Path, tmp_path: Path):
    """A history image used as the reference comes back as a path in the output folder: ours, so accepted;
    without the output folder, or through a symlink leading out of it, the same kind of path is refused."""
    output_dir = tmp_path / "outputs"
    made = output_dir / "2026-12-03" / "120000-job-0-5.png"
    made.parent.mkdir(parents=True)
    made.write_bytes(png_bytes())
    assert trusted_upload(str(made), "reference_image", output_dir) == made.resolve()
    (output_dir / "leak.png").symlink_to("/etc/passwd")
    for path, roots in ((str(made), None), (str(output_dir / "leak.png"), output_dir), ("/etc/passwd", output_dir)):
        with pytest.raises(ServiceError):
            trusted_upload(path, "reference_image", roots)
    check_file_references({"data": [{"path": str(made)}]}, output_dir)
    with pytest.raises(ServiceError):
        check_file_references({"data": [{"path": str(made)}]})


def test_file_references_are_found_anywhere_in_a_body_even_deeply_nested():
    body = {"data": [1, {"path": "/a"}, [{"value": {"path": "/b", "meta": FILE_META}}]], "event_data": None}
    assert sorted(file_references(body)) == [("data[1]", "/a"), ("data[2][0].value", "/b")]
    deep: list = [{"path": "/etc/passwd"}]
    for _ in range(50_000):  # far beyond Python's recursion limit
        deep = [deep]
    with pytest.raises(ServiceError, match="must be a file uploaded"):
        check_file_references(deep)


def test_handlers_refuse_server_paths_themselves(tmp_path: Path, upload_dir: Path):
    handlers = UiHandlers(GenerationService(make_settings(tmp_path), FakeEngine))
    form = dict(zip(GRADIO_PARAMETERS, FORM))
    for field in ("reference_image", "mask", "control_image"):  # every image the form takes
        with pytest.raises(ServiceError) as caught:
            handlers._build_request({**form, field: {"path": "/etc/passwd"}})
        assert caught.value.key == "untrusted_file" and caught.value.field == field
    request = type("Request", (), {"headers": {"accept-language": "en"}})()
    status = handlers.restore_from_png("/etc/passwd", "en", request)[-1]
    assert "recipe_drop must be a file uploaded to this server" in status
