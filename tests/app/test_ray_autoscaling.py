"""Autoscaling between ray_min_replicas = 1 and ray_max_replicas = 2 on a local Ray cluster with CPU replicas
(ray_gpus_per_replica = 0): Serve adds the second replica while jobs pile up, both serve, and it goes back to
one when idle. Short scaling delays come from the app's own settings; every wait is a generous deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from live_server import LiveServer
from model.request import GenerationRequest
from ray_nodes import ray_app

pytestmark = pytest.mark.slow

# Serve's autoscaler sees the load through metrics pushed every 10 s and averaged over 30 s: minutes, not seconds.
SCALE_DEADLINE = 300.0
IN_FLIGHT = 4  # two running (one per replica once there are two), two waiting


@pytest.fixture(scope="module")
def autoscaling_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with ray_app(tmp_path_factory.mktemp("ray-autoscaling"), tiny_model_dir / "comfy",
                 "z-image-turbo-autoscaling-tests", {"num_cpus": 2}, ray_min_replicas=1, ray_max_replicas=2,
                 ray_gpus_per_replica=0, ray_upscale_delay_seconds=0, ray_downscale_delay_seconds=2) as live:
        yield live


def submit(server: LiveServer, seed: int):
    request = GenerationRequest(prompt="a busy day", width=128, height=128, steps=20, seed=seed)
    return server.service.submit(request, door="rest")


def replica_id(job) -> str:
    return job.result.images[0].recipe["model"]["replica"]["replica"]


def test_a_second_replica_serves_while_jobs_pile_up_and_goes_when_idle(autoscaling_server: LiveServer):
    service = autoscaling_server.service
    assert service.replica_states() == {"RUNNING": 1}
    assert autoscaling_server.metric("zimage_replicas_running") == 1

    # Keep IN_FLIGHT jobs going until jobs finished on two different replicas.
    jobs, seed = [], 0
    deadline = time.monotonic() + SCALE_DEADLINE
    served_by: set[str] = set()
    while len(served_by) < 2:
        assert time.monotonic() < deadline, f"no second replica served in time: {service.replica_states()}"
        while sum(not job.done for job in jobs) < IN_FLIGHT:
            seed += 1
            jobs.append(submit(autoscaling_server, seed))
        time.sleep(0.5)
        for job in jobs:
            assert not (job.done and job.error), job.error
        served_by = {replica_id(job) for job in jobs if job.done}
    assert service.replica_states() == {"RUNNING": 2}
    assert autoscaling_server.metric("zimage_replicas_running") == 2

    for job in jobs:
        assert job.wait(120) and job.error is None, job.error
    # Idle: back to ray_min_replicas, and the one left still serves.
    autoscaling_server.wait_until(lambda: service.replica_states() == {"RUNNING": 1}, timeout=SCALE_DEADLINE)
    last = submit(autoscaling_server, 99)
    assert last.wait(120) and last.error is None, last.error
    assert replica_id(last) in served_by

