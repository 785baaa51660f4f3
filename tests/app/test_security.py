"""Host allow-list, origins, JSON-only POSTs, security headers and the optional API key (issue 11, security 2-3)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError
from PIL import Image

from app import security
from app.auth import SESSION_COOKIE, session_valid, session_value
from app.ui.export import GRADIO_PARAMETERS
from app.security import SecurityPolicy
from app.ui.handlers import UiHandlers
from app_helpers import gradio_form, make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running

KEY = "zk-test-0123456789abcdef"
TOOLS_ORIGIN = "https://tools.example"
EVIL_ORIGIN = "http://evil.example"
FORM = gradio_form(prompt="a blue gate", steps=2, seed=7, width=128, height=128)
REST_BODY = {"prompt": "a blue gate", "size": "128x128", "steps": 1}
GENERATE_FN_INDEX = 1  # the page's second event: the Generate click reads the mask first (app.ui.page)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """Default settings: loopback, no key, no CORS origins."""
    with running(make_settings(tmp_path_factory.mktemp("plain")), FakeEngine) as live:
        yield live


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """As deployed beyond loopback: wildcard bind setting, a LAN name, one CORS origin and an API key."""
    settings = make_settings(tmp_path_factory.mktemp("guarded"), host="0.0.0.0", allowed_hosts="gpu-box.lan",
                             cors_origins=TOOLS_ORIGIN, api_key=KEY)
    with running(settings, FakeEngine) as live:
        yield live


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def own_host(server: LiveServer) -> str:
    return server.url.removeprefix("http://")


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# ---- Host allow-list (DNS rebinding) -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/health/ready", "/metrics", "/v1/models", "/gradio_api/info", "/config"])
def test_foreign_host_names_are_refused_on_every_route(plain: LiveServer, path: str):
    for host in ("evil.example", "evil.example:7860", "192.168.1.50:7860", "127.0.0.1.evil.example",
                 "localhost.evil.example:80", "[::1", "localhost:port"):
        response = httpx.get(plain.url + path, headers={"Host": host})
        assert response.status_code == 400, (host, response.text)
        assert error_code(response) == "host_not_allowed" and "allowed_hosts" in response.json()["error"]["message"]


def test_loopback_names_with_any_port_are_served_and_the_watchdog_check_works(plain: LiveServer):
    port = plain.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.1:1"):
        assert httpx.get(plain.url + "/", headers={"Host": host}).status_code == 200, host
    assert httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200  # supervisor/health_watchdog.py


def test_a_wildcard_bind_accepts_ip_literals_and_listed_names_only(guarded: LiveServer):
    for host in ("192.168.1.50:7860", "10.1.2.3", "[fe80::1]:7860", "gpu-box.lan:7860", "GPU-BOX.LAN"):
        assert httpx.get(guarded.url + "/health/live", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "gpu-box.lan.evil.example", "192.168.1.50.nip.io"):
        assert httpx.get(guarded.url + "/health/live", headers={"Host": host}).status_code == 400, host


def test_host_policy_from_settings(tmp_path: Path):
    specific = SecurityPolicy.from_settings(make_settings(tmp_path, host="10.0.0.5"))
    assert specific.host_allowed("10.0.0.5:7860") and specific.host_allowed("localhost")
    assert not specific.host_allowed("10.0.0.6:7860") and not specific.host_allowed("box.lan")
    listed = SecurityPolicy.from_settings(make_settings(tmp_path, allowed_hosts="box.lan, [fd00::7]"))
    assert listed.host_allowed("box.lan:80") and listed.host_allowed("[fd00::7]:7860")
    assert not listed.host_allowed("192.168.1.50")  # a loopback bind only answers to IP literals it was told
    anything = SecurityPolicy.from_settings(make_settings(tmp_path, allowed_hosts="*"))
    assert anything.host_allowed("whatever.example") and not anything.host_allowed("bad host:x")


# ---- CORS, origins, content types ------------------------------------------------------------------------

def test_no_cors_headers_for_foreign_origins(plain: LiveServer):
    for host in (own_host(plain), "192.168.1.50:7860"):
        response = httpx.get(plain.url + "/gradio_api/info", headers={"Host": host, "Origin": EVIL_ORIGIN})
        assert "access-control-allow-origin" not in response.headers, host
        assert "access-control-allow-credentials" not in response.headers, host
    preflight = httpx.options(plain.url + "/gradio_api/queue/join", headers={
        "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in preflight.headers


def test_a_configured_cors_origin_may_call_with_the_key(guarded: LiveServer):
    preflight = httpx.options(guarded.url + "/v1/images/generations", headers={
        "Origin": TOOLS_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == TOOLS_ORIGIN
    response = httpx.post(guarded.url + "/v1/images/generations", json=REST_BODY, timeout=60,
                          headers={"Origin": TOOLS_ORIGIN, **bearer()})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == TOOLS_ORIGIN
    foreign = httpx.post(guarded.url + "/v1/images/generations", json=REST_BODY, headers={"Origin": EVIL_ORIGIN, **bearer()})
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers


@pytest.mark.parametrize("path, body", [
    ("/v1/images/generations", REST_BODY),
    ("/gradio_api/call/generate", {"data": FORM}),
    # queue/join is the page's own call: it also sends the tab's language state (None = browser's).
    ("/gradio_api/queue/join", {"data": [*FORM, None], "fn_index": GENERATE_FN_INDEX, "session_hash": "s-evil"}),
], ids=["rest", "gradio-call", "gradio-queue-join"])
def test_pages_of_other_sites_cannot_start_jobs(plain: LiveServer, path: str, body: dict):
    submitted = "zimage_jobs_submitted_total"
    before = plain.metric(submitted)
    payload = json.dumps(body)
    for headers, status, code in (
            ({"Content-Type": "application/json", "Origin": EVIL_ORIGIN}, 403, "origin_not_allowed"),
            ({"Content-Type": "application/json", "Origin": "null"}, 403, "origin_not_allowed"),
            ({"Content-Type": "text/plain", "Origin": EVIL_ORIGIN}, 403, "origin_not_allowed"),
            ({"Content-Type": "text/plain"}, 415, "json_required"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "json_required"),
            ({}, 415, "json_required")):
        response = httpx.post(plain.url + path, content=payload, headers=headers, timeout=30)
        assert response.status_code == status and error_code(response) == code, (headers, response.text)
    time.sleep(1.0)  # a Gradio event that had been accepted would have reached our queue by now
    assert plain.metric(submitted) == before
    same_origin = httpx.post(plain.url + path, content=payload, timeout=60, headers={
        "Content-Type": "application/json; charset=utf-8", "Origin": plain.url})
    assert same_origin.status_code == 200, same_origin.text
    plain.wait_until(lambda: plain.metric(submitted) == before + 1, timeout=30)


@pytest.mark.parametrize("path", ["/", "/v1/models", "/health/live", "/gradio_api/info", "/no/such/page"])
def test_every_response_forbids_framing_and_sniffing(plain: LiveServer, path: str):
    headers = httpx.get(plain.url + path).headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    refused = httpx.get(plain.url + path, headers={"Host": "evil.example"}).headers
    assert refused["x-frame-options"] == "DENY" and refused["x-content-type-options"] == "nosniff"


# ---- API key ---------------------------------------------------------------------------------------------

def test_rest_needs_the_key_and_the_openai_sdk_sends_it(guarded: LiveServer):
    for headers in ({}, bearer("wrong"), {"Authorization": KEY}):
        response = httpx.post(guarded.url + "/v1/images/generations", json=REST_BODY, headers=headers)
        assert response.status_code == 401 and error_code(response) == "api_key_required", headers
        assert response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(model="z-image-turbo", prompt="a key", size="128x128", response_format="b64_json",
                                    extra_body={"steps": 1, "seed": 3})
    assert result.data[0].b64_json and [m.id for m in client.models.list().data] == ["z-image-turbo"]


def test_health_stays_open_locally_and_the_rest_needs_the_key(guarded: LiveServer):
    for path in ("/health/live", "/health/ready", "/metrics"):  # the watchdog, setup script, HEALTHCHECK
        assert httpx.get(guarded.url + path).status_code == 200, path
    for path in ("/gradio_api/info", "/config", "/v1/models", "/gradio_api/file=/etc/hostname"):
        assert httpx.get(guarded.url + path).status_code == 401, path
    assert httpx.get(guarded.url + "/config", headers=bearer()).status_code == 200


def test_ready_and_metrics_need_the_key_from_other_addresses(tmp_path: Path):
    app = FastAPI()
    for path in ("/health/live", "/health/ready", "/metrics"):
        app.add_api_route(path, lambda: {"status": "ok"})
    security.install(app, make_settings(tmp_path, api_key=KEY, allowed_hosts="testserver"))
    with TestClient(app, client=("192.168.1.7", 50000)) as remote:
        assert remote.get("/health/live").status_code == 200
        for path in ("/health/ready", "/metrics"):
            assert remote.get(path).status_code == 401, path
            assert remote.get(path, headers=bearer()).status_code == 200, path
    with TestClient(app, client=("::1", 50000)) as local:
        assert local.get("/metrics").status_code == 200


def test_gradio_client_needs_the_key_in_its_headers(guarded: LiveServer, tmp_path: Path):
    with pytest.raises(AuthenticationError):
        Client(guarded.url + "/", verbose=False)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(reference)
    client = Client(guarded.url + "/", verbose=False, headers=bearer(), download_files=str(tmp_path / "downloads"))
    try:
        form = dict(zip(GRADIO_PARAMETERS, FORM))
        status, images, _ = client.predict(**{**form, "reference_image": handle_file(str(reference))},
                                           api_name="/generate")
    finally:
        client.close()
    assert "Done" in status and Path(images[0]["image"]).is_file()  # the upload and the download carried it too


def test_the_browser_logs_in_with_the_key(guarded: LiveServer):
    page = httpx.get(guarded.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login"
    form = httpx.get(guarded.url + "/login")
    assert form.status_code == 200 and 'name="api_key"' in form.text and KEY not in form.text
    wrong = httpx.post(guarded.url + "/login", data={"api_key": "nope"})
    assert wrong.status_code == 401 and "Wrong API key" in wrong.text
    login = httpx.post(guarded.url + "/login", data={"api_key": KEY}, headers={"Origin": guarded.url})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.cookies[SESSION_COOKIE]
    set_cookie = login.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and KEY not in set_cookie
    with httpx.Client(base_url=guarded.url, cookies={SESSION_COOKIE: cookie}) as browser:
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 200
        job = browser.post("/gradio_api/call/generate", json={"data": FORM}, headers={"Origin": guarded.url})
        assert job.status_code == 200, job.text
        forged = browser.post("/gradio_api/call/generate", json={"data": FORM}, headers={"Origin": EVIL_ORIGIN})
        assert forged.status_code == 403
        logout = browser.get("/logout")
        assert logout.status_code == 303 and 'zimage_session=""' in logout.headers["set-cookie"]
    foreign_login = httpx.post(guarded.url + "/login", data={"api_key": KEY}, headers={"Origin": EVIL_ORIGIN})
    assert foreign_login.status_code == 403


def test_session_cookies_are_signed_and_expire():
    value = session_value(KEY, now=1000.0)
    assert session_valid(KEY, value, now=1001.0)
    assert not session_valid("another-key", value, now=1001.0)
    assert not session_valid(KEY, value, now=1000.0 + 8 * 24 * 3600)
    expires, signature = value.split(".")
    assert not session_valid(KEY, f"{int(expires) + 10**6}.{signature}", now=1001.0)
    assert not session_valid(KEY, None) and not session_valid(KEY, "garbage")


def test_binding_beyond_loopback_without_a_key_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cases = {("0.0.0.0", ""): True, ("192.168.1.5", ""): True, ("0.0.0.0", KEY): False, ("127.0.0.1", ""): False,
             ("localhost", ""): False, ("::1", ""): False}
    for (host, key), warns in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="app.security"):
            security.install(FastAPI(), make_settings(tmp_path, host=host, api_key=key))
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "api_key" in r.getMessage()]
        assert bool(warned) == warns, (host, key)
        assert all(KEY not in r.getMessage() for r in caplog.records)


def test_settings_never_show_the_key(tmp_path: Path):
    assert KEY not in repr(make_settings(tmp_path, api_key=KEY))


def exported_snippets(server: LiveServer, reference: bool):
    handlers = UiHandlers(server.service)
    request = SimpleNamespace(headers={"host": own_host(server), "accept-language": "en"})
    form = dict(zip(GRADIO_PARAMETERS, FORM), reference_image={"path": "x"} if reference else None, seed=41)
    return handlers.export(None, [], "en", request, *form.values())


def test_exported_code_reads_the_key_from_the_environment_and_runs(guarded: LiveServer, plain: LiveServer,
                                                                   tmp_path: Path):
    assert not any("ZIMAGE_API_KEY" in code for code in exported_snippets(plain, reference=True))
    python, curl_gradio, curl_rest, openai_code = exported_snippets(guarded, reference=True)
    for code in (python, curl_gradio, curl_rest, openai_code):
        assert "ZIMAGE_API_KEY" in code and KEY not in code
    Image.new("RGB", (48, 48), (9, 9, 9)).save(tmp_path / "reference.png")
    env = {**os.environ, "ZIMAGE_API_KEY": KEY, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    runs = {"python": [sys.executable, "-c", python], "curl_gradio": ["bash", "-c", curl_gradio],
            "curl_rest": ["bash", "-c", curl_rest], "openai": [sys.executable, "-c", openai_code]}
    for name, command in runs.items():
        (tmp_path / "z-image-0.png").unlink(missing_ok=True)
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, (name, run.stderr)
        if name == "curl_gradio":
            assert "event: complete" in run.stdout and "seed 41" in run.stdout, run.stdout
        elif name == "python":
            assert "seed 41" in run.stdout, run.stdout
        else:
            assert (tmp_path / "z-image-0.png").is_file(), name
    (tmp_path / "z-image-0.png").unlink()
    wrong_key = subprocess.run(["bash", "-c", curl_rest], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env={**env, "ZIMAGE_API_KEY": "wrong"})
    assert wrong_key.returncode != 0 and not (tmp_path / "z-image-0.png").exists()


def test_gradio_json_bodies_are_bounded_and_parsed_safely(plain: LiveServer):
    limit = plain.service.settings.max_upload_bytes
    huge = httpx.post(plain.url + "/gradio_api/call/generate", content=b"[" * (limit + 1),
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert huge.status_code == 413
    deep = httpx.post(plain.url + "/gradio_api/call/generate", content=b"[" * 100_000 + b"]" * 100_000,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert deep.status_code == 400 and error_code(deep) == "invalid_json"
    assert httpx.get(plain.url + "/health/live").status_code == 200


def test_the_image_editors_blob_upload_is_the_only_other_multipart_post(plain: LiveServer):
    """The mask editor uploads its strokes to Gradio's component server as multipart (the browser test paints
    through it); from another origin that is refused too, and JSON bodies there are still inspected."""
    url = plain.url + "/gradio_api/component_server/"
    files = {"files": ("layer_0.png", b"\x89PNG not really", "image/png")}
    foreign = httpx.post(url, files=files, data={"session_hash": "s"}, headers={"Origin": EVIL_ORIGIN}, timeout=30)
    assert foreign.status_code == 403 and error_code(foreign) == "origin_not_allowed"
    own = httpx.post(url, files=files, data={"session_hash": "s"}, headers={"Origin": plain.url}, timeout=30)
    assert own.status_code != 415 and "json_required" not in own.text  # Gradio itself answers
    naming = httpx.post(url, json={"session_hash": "s", "component_id": 1, "fn_name": "accept_blobs",
                                   "data": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}}, timeout=30)
    assert naming.status_code == 422 and error_code(naming) == "untrusted_file"
    for other in ("/gradio_api/queue/join", "/gradio_api/run/predict"):
        refused = httpx.post(plain.url + other, files=files, timeout=30)
        assert refused.status_code == 415 and error_code(refused) == "json_required", other
    assert httpx.get(plain.url + "/health/live").status_code == 200


@pytest.mark.browser
def test_chromium_logs_in_and_gets_the_page(guarded: LiveServer):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(locale="en-US")
            page.goto(guarded.url + "/")
            assert page.url.endswith("/login")
            page.fill("#api_key", "wrong")
            page.click("button[type=submit]")
            expect(page.locator(".error")).to_contain_text("Wrong API key")
            page.fill("#api_key", KEY)
            page.click("button[type=submit]")
            expect(page.locator("#gen-btn")).to_be_visible(timeout=60_000)
            page.fill("#prompt textarea", "a lantern")
            page.click("#gen-btn")  # the page's own queue/join POST passes the Origin and JSON checks
            expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)
        finally:
            browser.close()
