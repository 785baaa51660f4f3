"""Liveness, readiness and metrics (acceptance 5): ready server, hung-job watchdog, no weights, `python -m app`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.settings import REPO_ROOT
from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, free_port, running, start_server
from model.request import GenerationRequest


def test_ready_server_reports_live_ready_and_metrics(tiny_server: LiveServer):
    live = httpx.get(tiny_server.url + "/health/live")
    assert live.status_code == 200 and live.json()["model_loaded"] is True
    ready = httpx.get(tiny_server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["model"]["layout"] == "comfy"
    httpx.post(tiny_server.url + "/v1/images/generations", json={"prompt": "m", "size": "128x128", "steps": 1},
               timeout=120).raise_for_status()
    metrics = httpx.get(tiny_server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for line in ("zimage_model_ready 1.0", "# TYPE zimage_queue_depth gauge", "# TYPE zimage_stage_seconds histogram",
                 'zimage_stage_seconds_bucket{stage="denoising",le="+Inf"}', 'zimage_jobs_total{outcome="succeeded"}',
                 'zimage_stage_seconds_count{stage="queue_wait"}', 'zimage_stage_seconds_count{stage="warmup"} 1'):
        assert line in text, line


def test_errors_are_counted_once_by_code(tiny_server: LiveServer):
    name = 'zimage_errors_total{code="size_format"}'
    text = httpx.get(tiny_server.url + "/metrics").text
    before = tiny_server.metric(name) if name in text else 0.0
    for _ in range(2):
        httpx.post(tiny_server.url + "/v1/images/generations", json={"prompt": "a", "size": "huge"})
    assert tiny_server.metric(name) == before + 2


def test_live_turns_503_when_a_job_outlives_the_watchdog(tmp_path: Path):
    settings = make_settings(tmp_path, watchdog_seconds=0.3)
    server = start_server(settings, lambda: FakeEngine(step_seconds=0.1))
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/health/live").status_code == 200
        job = server.service.submit(GenerationRequest(prompt="slow", width=128, height=128, steps=50), door="test")
        server.wait_until(lambda: server.service.running_for() > 0.3, timeout=30)
        hung = httpx.get(server.url + "/health/live")
        assert hung.status_code == 503 and hung.json()["status"] == "hung"
        server.service.cancel(job)
        assert job.wait(10)
        assert httpx.get(server.url + "/health/live").status_code == 200
    finally:
        server.stop()


def start_app_process(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full_env = {**os.environ, "ZIMAGE_PORT": str(port), "ZIMAGE_OUTPUT_DIR": str(tmp_path / "out"),
                "ZIMAGE_DTYPE": "float32", "ZIMAGE_DEVICE": "cpu", "ZIMAGE_MIN_SIZE": "128",
                "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), **env}
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO_ROOT, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url + "/health/live", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "python -m app did not come up"
        time.sleep(0.2)


def stop_app_process(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


@pytest.mark.slow  # a real `python -m app` process
def test_without_weights_the_app_serves_an_explanation(tmp_path: Path):
    missing = tmp_path / "no-weights"
    process, url = start_app_process(tmp_path, ZIMAGE_WEIGHTS_DIR=str(missing))
    try:
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health/live").json()["engine"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(url + "/health/live").status_code == 200
        ready = httpx.get(url + "/health/ready", headers={"Accept-Language": "zh-CN"})
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert "未找到模型权重" in ready.json()["message"] and missing.name in ready.json()["message"]
        assert str(missing) not in ready.text  # clients get the folder's name, the log its full path
        response = httpx.post(url + "/v1/images/generations", json={"prompt": "a cat", "size": "256x256"})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "weights_missing" and "scripts/download_weights.py" in error["message"]
        assert "zimage_model_ready 0.0" in httpx.get(url + "/metrics").text
        assert httpx.get(url + "/").status_code == 200  # the UI still loads and shows the banner
    finally:
        output = stop_app_process(process)
    assert process.returncode == 0, output
    assert "Model weights not found" in output  # logged with a timestamp to stderr
    assert any(line[:4].isdigit() and " ERROR app.service: " in line for line in output.splitlines())


@pytest.mark.slow  # real `python -m app` processes on the tiny model
@pytest.mark.parametrize("grace, steps, status", [(20, 20, 200), (1, 50, 503)],
                         ids=["finishes-within-grace", "cancelled-after-grace"])
def test_sigterm_is_graceful_and_exits_zero(tmp_path: Path, tiny_model_dir: Path, grace: int, steps: int,
                                            status: int):
    process, url = start_app_process(tmp_path, ZIMAGE_WEIGHTS_DIR=str(tiny_model_dir / "comfy"),
                                     ZIMAGE_DEBUG_STEP_DELAY="0.1", ZIMAGE_SHUTDOWN_GRACE_SECONDS=str(grace))
    result: dict = {}
    try:
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health/ready").status_code != 200:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)

        def long_request() -> None:
            result["response"] = httpx.post(url + "/v1/images/generations", timeout=120,
                                            json={"prompt": "finish me", "size": "128x128", "steps": steps, "seed": 8})

        thread = threading.Thread(target=long_request)
        thread.start()
        while "zimage_jobs_running 1.0" not in httpx.get(url + "/metrics").text:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=120)
    finally:
        output = stop_app_process(process)
    assert process.returncode == 0, output
    response = result["response"]  # an answer either way, never a dropped connection
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["seeds"] == [8]
    else:
        assert response.json()["error"]["code"] == "shutting_down"
    assert "generation service stopped" in output


class NoReplicasEngine(FakeEngine):
    """A Ray-mode engine whose replicas are all still starting (or were lost): none RUNNING."""

    def replica_states(self) -> dict[str, int]:
        return {"STARTING": 2}


@pytest.mark.parametrize("lang, words", [
    ("en", ["No engine replica is running", "STARTING 2", "1 GPU each", "ray status", "ray_max_replicas"]),
    ("zh-CN", ["没有正在运行的引擎副本", "STARTING 2", "ray status", "ray_gpus_per_replica"]),
])
def test_no_running_replica_is_a_503_that_names_the_problem_and_the_fix(tmp_path: Path, lang: str, words: list):
    with running(make_settings(tmp_path, warmup=False), NoReplicasEngine) as server:
        ready = httpx.get(server.url + "/health/ready", headers={"Accept-Language": lang})
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "no_replicas" and body["replicas"] == {"STARTING": 2}
    assert all(word in body["message"] for word in words), body["message"]
