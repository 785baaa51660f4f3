"""serving = "ray" on a local Ray cluster with two declared (virtual) GPUs and two tiny-model replicas:
placement, parity with the in-process engine, backpressure, cancel across the process boundary, a replica
killed mid-job, and previews crossing as JPEG. One cluster for the module (it must fit a 2-core CI box)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.engine_loader import engine_factory
from app.errors import ServiceError
from app.jobs import JobState
from app.metadata import read_recipe
from app_helpers import STEP_DELAY
from live_server import LiveServer
from model.request import GenerationRequest
from ray_nodes import ray_app

pytestmark = pytest.mark.slow

GENERATIONS = "/v1/images/generations"
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def ray_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with ray_app(tmp_path_factory.mktemp("ray-app"), tiny_model_dir / "comfy", "z-image-turbo-tests",
                 {"num_cpus": 2, "num_gpus": 2}, ray_min_replicas=2, ray_max_replicas=2,
                 queue_size=QUEUE_SIZE) as live:
        yield live


def generate(server: LiveServer, **fields) -> httpx.Response:
    body = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 2, "seed": 7, **fields}
    return httpx.post(server.url + GENERATIONS, json=body, timeout=180)


def first_image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    image.load()
    return image


def submit(server: LiveServer, steps: int):
    request = GenerationRequest(prompt="a slow one", width=128, height=128, steps=steps, seed=3)
    return server.service.submit(request, door="rest")


def wait_until_step(job, step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while job.step < step:
        assert not job.done, job.error
        assert time.monotonic() < deadline, "the job did not reach the step in time"
        time.sleep(0.02)


def test_requests_spread_over_both_replicas_and_match_the_local_engine(ray_server: LiveServer):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda seed: generate(ray_server, seed=seed), [11, 12, 13, 14]))
    replicas = [read_recipe(first_image(r))["model"]["replica"] for r in responses]
    assert {r["cuda_visible_devices"] for r in replicas} == {"0", "1"}
    assert {tuple(r["gpu_ids"]) for r in replicas} == {("0",), ("1",)}
    assert len({r["replica"] for r in replicas}) == 2

    import torch

    # Same arithmetic as a replica: Ray gives a 1-CPU actor one thread (sums split differently otherwise).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = engine_factory(ray_server.service.settings)()
        expected = local.generate(GenerationRequest(prompt="a lighthouse at dusk", width=128, height=128,
                                                    steps=2, seed=11)).images[0]
    finally:
        torch.set_num_threads(threads)
    served = np.asarray(first_image(responses[0]).convert("RGB"), dtype=np.int16)
    assert np.abs(served - np.asarray(expected, dtype=np.int16)).max() == 0


def test_health_and_metrics_count_the_replicas(ray_server: LiveServer):
    ready = httpx.get(ray_server.url + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["replicas"] == {"RUNNING": 2}
    assert ready.json()["model"]["serving"] == "ray"
    assert ray_server.metric("zimage_replicas_running") == 2


def test_overflow_beyond_the_replicas_and_the_queue_gets_429(ray_server: LiveServer):
    # Two jobs run (one per replica; started first, so that no worker is still between jobs when the rest
    # arrive), QUEUE_SIZE wait, the rest are refused at once.
    running = [submit(ray_server, steps=20) for _ in range(2)]
    for job in running:
        wait_until_step(job, 1)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda seed: generate(ray_server, seed=seed, steps=2), range(5)))
    assert all(job.wait(60) and job.state == JobState.SUCCEEDED for job in running)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * QUEUE_SIZE + [429] * (5 - QUEUE_SIZE), codes
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.headers["Retry-After"] == "5" and r.json()["error"]["code"] == "queue_full" for r in refused)


def test_cancel_stops_the_replica_at_its_next_step(ray_server: LiveServer):
    long_jobs = [submit(ray_server, steps=40) for _ in range(2)]  # one per replica, 40 x 0.1 s
    for job in long_jobs:
        wait_until_step(job, 2)
    for job in long_jobs:
        ray_server.service.cancel(job)
    assert all(job.wait(10) and job.state == JobState.CANCELLED for job in long_jobs)
    assert max(job.step for job in long_jobs) < 10
    # Had the replicas kept going, these would start only after the long jobs' 40 steps: so they must end before
    # the earliest moment those could have ended (a bound from the step delay, not from this machine's speed).
    short_jobs = [submit(ray_server, steps=1) for _ in range(2)]
    assert all(job.wait(30) and job.state == JobState.SUCCEEDED for job in short_jobs)
    earliest_long_end = min(job.started_at for job in long_jobs) + 40 * STEP_DELAY
    assert max(job.finished_at for job in short_jobs) < earliest_long_end


def test_a_killed_replica_fails_only_its_job_and_serving_goes_on(ray_server: LiveServer):
    import ray

    jobs = [submit(ray_server, steps=30) for _ in range(2)]
    for job in jobs:
        wait_until_step(job, 2)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "EngineReplica" in a["name"]]
    assert len(names) == 2
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    for job in jobs:
        assert job.wait(60)
    assert sorted(job.state.value for job in jobs) == ["failed", "succeeded"]
    failed = next(job for job in jobs if job.state == JobState.FAILED)
    assert failed.error.key == "replica_failed" and failed.error.status == 503
    assert "replica" in failed.error.message("en")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda seed: generate(ray_server, seed=seed), [21, 22]))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    # Serve replaces the dead replica.
    ray_server.wait_until(lambda: ray_server.service.replica_states() == {"RUNNING": 2}, timeout=120)


def test_a_full_serve_queue_is_our_429(ray_server: LiveServer, monkeypatch: pytest.MonkeyPatch):
    """Replicas busy and the handle's own queue full (another front door shares them): Serve's
    BackPressureError reaches the client as the same queue_full 429."""
    from ray.serve.exceptions import BackPressureError

    engine = ray_server.service._engine

    class RefusingHandle:
        def options(self, **_):
            return self

        @property
        def generate(self):
            return self

        def remote(self, _request):
            raise BackPressureError(num_queued_requests=4, max_queued_requests=4)

    monkeypatch.setattr(engine, "_handle", RefusingHandle())
    with pytest.raises(ServiceError) as refused:
        engine.generate(GenerationRequest(prompt="x", width=128, height=128, steps=1))
    assert refused.value.key == "queue_full" and refused.value.status == 429


def test_tokens_are_counted_in_the_app_as_the_engine_counts_them(ray_server: LiveServer, tiny_model_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """Counting a prompt never waits for a replica (they are busy with images; their queue is the one
    backpressure counts), and gives the engine's own count, chat template included."""
    from model.engine import Engine

    engine = ray_server.service._engine

    class NoHandle:
        def __getattr__(self, name):
            raise AssertionError(f"count_tokens used the replicas' handle ({name})")

    monkeypatch.setattr(engine, "_handle", NoHandle())
    local = Engine.from_pretrained(tiny_model_dir / "comfy", device="cpu")
    for prompt in ("a lighthouse at dusk", "一只猫坐在红色的沙发上", "x " * 300):
        assert engine.count_tokens(prompt) == local.count_tokens(prompt)


def test_an_engine_refusal_in_a_replica_keeps_its_code_and_field(ray_server: LiveServer):
    """The replica's engine refuses an unreadable LoRA: the client gets the same 400 as in local mode."""
    lora_dir = ray_server.service.settings.lora_dir
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "broken.safetensors").write_bytes(b"not a safetensors file")
    response = generate(ray_server, loras=[{"name": "broken", "scale": 1.0}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("lora_rejected", "loras")
    assert generate(ray_server).status_code == 200  # the replica that refused it still serves


def test_a_streamed_request_gets_the_replica_s_previews_before_the_image(ray_server: LiveServer):
    from test_stream import read_events

    body = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 8, "seed": 9}
    with httpx.stream("POST", ray_server.url + "/v1/images/generations/stream", json=body,
                      params={"preview": "true"}, timeout=180) as response:
        assert response.status_code == 200
        events = list(read_events(response))
    names = [name for name, _ in events]
    assert names[-1] == "result" and "error" not in names, names
    previews = [data for name, data in events if name == "progress" and "preview" in data]
    assert previews, events  # ~0.8 s of steps, one preview per 0.3 s at most, the last step's always
    for event in previews:
        with Image.open(io.BytesIO(base64.b64decode(event["preview"]))) as image:
            assert image.format == "JPEG" and image.size == (16, 16)  # the latent size of 128x128
    assert previews[-1]["preview_step"] == 8


def test_step_events_carry_jpeg_bytes_not_tensors(ray_server: LiveServer):
    """What crosses the replica boundary per step: the step numbers and, when due, a small JPEG; the step's
    latents (two [1, 16, 64, 64] float tensors at 512x512) stay in the replica."""
    import pickle

    from app.serving.events import STEP

    handle = ray_server.service._engine._handle
    request = GenerationRequest(prompt="a wide one", width=512, height=512, steps=3, seed=4)
    events = list(handle.options(stream=True).generate.remote(request))
    steps = [event for event in events if event[0] == STEP]
    assert [event[1].step for event in steps] == [1, 2, 3]
    assert all(event[1].preview is None for event in steps)
    jpegs = [event[2] for event in steps if event[2] is not None]
    assert jpegs and all(jpeg.startswith(b"\xff\xd8") for jpeg in jpegs)  # JPEG magic
    for event in steps:
        wire = pickle.dumps(event)
        assert b"torch" not in wire and len(wire) < 16 * 1024, len(wire)
    assert events[-1][1].replica["replica"]  # the result names its replica (GenerationResult.replica)
