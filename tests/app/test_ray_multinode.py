"""serving = "ray" on a real two-node Ray cluster: a head and a second raylet on this machine (`ray start --head`,
`ray start --address`, as README "Several machines" says), one declared GPU each, and the app joining by the
head's address with two one-GPU replicas. Each node has room for one replica only, so both nodes must serve."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.metadata import read_recipe
from live_server import free_port
from ray_nodes import RayNode, active_nodes, app_process, ensure_auth_token, short_temp_dir
from tests.ops.supervisor_helpers import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory):
    ensure_auth_token()
    logs = tmp_path_factory.mktemp("ray-nodes")
    temp_dir = short_temp_dir("zr")
    address = f"127.0.0.1:{free_port()}"
    head = RayNode(["--head", f"--port={address.split(':')[1]}", "--num-cpus=1", "--num-gpus=1",
                    "--include-dashboard=false", f"--temp-dir={temp_dir}"], logs / "head.log")
    worker = RayNode([f"--address={address}", "--num-cpus=1", "--num-gpus=1"], logs / "worker.log")
    try:
        head.start()
        wait_until(lambda: len(active_nodes(address)) == 1, 120, f"the head at {address} (log: {head.log})")
        worker.start()
        wait_until(lambda: len(active_nodes(address)) == 2, 120, f"the second node to join (log: {worker.log})")
        yield address
    finally:
        worker.stop()
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def replica_of(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
        return read_recipe(image)["model"]["replica"]


def test_the_replicas_run_on_both_nodes_and_both_serve(two_nodes: str, tiny_model_dir: Path, tmp_path: Path):
    nodes = active_nodes(two_nodes)
    assert len(nodes) == 2
    with app_process(tmp_path, ZIMAGE_WEIGHTS_DIR=str(tiny_model_dir / "comfy"), ZIMAGE_SERVING="ray",
                     ZIMAGE_RAY_ADDRESS=two_nodes, ZIMAGE_RAY_MIN_REPLICAS="2", ZIMAGE_RAY_MAX_REPLICAS="2") as url:
        def generate(seed: int) -> httpx.Response:
            body = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 2, "seed": seed}
            return httpx.post(url + "/v1/images/generations", json=body, timeout=180)

        assert httpx.get(url + "/health/ready", timeout=10).status_code == 200
        # Two at a time: a replica holds one job (max_ongoing_requests=1), so both replicas take jobs.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replicas = [replica_of(r) for r in pool.map(generate, [31, 32, 33, 34])]
        ready = httpx.get(url + "/health/ready", timeout=10).json()
    assert {r["node"] for r in replicas} == nodes, replicas
    assert len({r["replica"] for r in replicas}) == 2 and len({r["pid"] for r in replicas}) == 2
    assert {tuple(r["gpu_ids"]) for r in replicas} == {("0",)}  # each node's own (declared) GPU
    assert ready["replicas"] == {"RUNNING": 2}


def test_an_app_without_the_token_mode_is_told_how_to_join(two_nodes: str, tiny_model_dir: Path, tmp_path: Path):
    """The head requires its token; an app joining by address without RAY_AUTH_MODE=token is refused at once
    (no minutes of retries) and /health/ready says what to do, in both languages."""
    with app_process(tmp_path, token=False, ZIMAGE_WEIGHTS_DIR=str(tiny_model_dir / "comfy"),
                     ZIMAGE_SERVING="ray", ZIMAGE_RAY_ADDRESS=two_nodes) as url:
        english = httpx.get(url + "/health/ready", timeout=10)
        chinese = httpx.get(url + "/health/ready", headers={"Accept-Language": "zh-CN"}, timeout=10).json()
    assert english.status_code == 503 and english.json()["status"] == "unavailable"
    message = english.json()["message"]
    assert two_nodes in message and "auth token" in message and "RAY_AUTH_MODE=token" in message, message
    assert "认证令牌" in chinese["message"] and "RAY_AUTH_MODE=token" in chinese["message"]
