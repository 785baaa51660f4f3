"""The Ray head under the real supervisord: program z-image-turbo-ray-head from the shipped
supervisor/z-image-turbo-ray.conf comes up, answers `ray status`, serves the app's replica (the app joins it by
address), and `supervisorctl stop` leaves none of the processes it started.

The test copy of the shipped file differs in two flags only: a free port instead of 6379 and a private
--temp-dir (other Ray clusters may run on this machine). Its %(here)s/../.venv is a link to this venv.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.metadata import read_recipe
from live_server import free_port
from ray_nodes import (VENV_BIN, active_nodes, app_process, cluster_status, descendants, ensure_auth_token,
                       group_members, living, short_temp_dir)
from tests.ops.supervisor_helpers import REPO_ROOT, SUPERVISORD_CONF, Supervisord, wait_until

pytestmark = pytest.mark.slow

PROGRAM = "z-image-turbo-ray-head"
SHIPPED_PORT = "--port=6379"


def write_config(folder: Path, port: int, temp_dir: Path) -> Path:
    """The shipped supervisord.conf including only the shipped Ray head file (port and temp dir changed)."""
    supervisor = folder / "supervisor"
    (supervisor / "run").mkdir(parents=True)
    (folder / ".venv").symlink_to(VENV_BIN.parent)
    main = SUPERVISORD_CONF.read_text(encoding="utf-8")
    assert "files = z-image-turbo.conf run/local.conf" in main
    (supervisor / "supervisord.conf").write_text(
        main.replace("files = z-image-turbo.conf run/local.conf", "files = z-image-turbo-ray.conf"))
    lines = (REPO_ROOT / "supervisor" / "z-image-turbo-ray.conf").read_text(encoding="utf-8").splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("command=")]
    command = lines[index]
    assert SHIPPED_PORT in command and command.endswith(" --block"), command
    command = command.replace(SHIPPED_PORT, f"--port={port}")
    lines[index] = command.replace(" --block", f" --temp-dir={temp_dir} --block")
    (supervisor / "z-image-turbo-ray.conf").write_text("\n".join(lines) + "\n")
    return supervisor / "supervisord.conf"


@pytest.fixture(scope="module")
def head_under_supervisord():
    ensure_auth_token()  # the shipped program runs with RAY_AUTH_MODE=token: the head needs the token
    folder, temp_dir = short_temp_dir("zs"), short_temp_dir("zr")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "SUPERVISOR_", "RAY_"))}
    daemon = Supervisord(folder / "supervisor" / "supervisord.conf", folder / "supervisor" / "run" / "supervisor.sock",
                         env)
    try:
        write_config(folder, port, temp_dir)
        daemon.start()
        yield {"daemon": daemon, "address": f"127.0.0.1:{port}", "log": folder / "supervisor" / "run"}
    finally:
        head_pid = 0
        with contextlib.suppress(Exception):  # the daemon may never have come up
            head_pid = daemon.info(PROGRAM)["pid"]
        started = descendants(head_pid) if head_pid else []
        daemon.stop()
        for pid in living(started):  # a failed test must not leave a raylet or worker behind
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_head_serves_the_app_and_stop_leaves_no_ray_process(head_under_supervisord: dict, tiny_model_dir: Path,
                                                                 tmp_path: Path):
    daemon, address = head_under_supervisord["daemon"], head_under_supervisord["address"]
    log = head_under_supervisord["log"] / f"{PROGRAM}.log"
    wait_until(lambda: daemon.info(PROGRAM)["statename"] == "RUNNING", 120, f"{PROGRAM} to be RUNNING ({log})")
    wait_until(lambda: cluster_status(address).returncode == 0, 120, f"`ray status --address={address}` ({log})")
    head_pid = daemon.info(PROGRAM)["pid"]

    # The app (`python -m app`, as program z-image-turbo runs it) joins the head by its address and deploys
    # one CPU replica there (this machine has no GPU).
    with app_process(tmp_path, ZIMAGE_WEIGHTS_DIR=str(tiny_model_dir / "comfy"), ZIMAGE_SERVING="ray",
                     ZIMAGE_RAY_ADDRESS=address, ZIMAGE_RAY_GPUS_PER_REPLICA="0") as url:
        assert httpx.get(url + "/health/ready", timeout=10).status_code == 200
        body = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 2, "seed": 5}
        response = httpx.post(url + "/v1/images/generations", json=body, timeout=180)
        assert response.status_code == 200, response.text
        with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
            replica = read_recipe(image)["model"]["replica"]
        started = descendants(head_pid)  # gcs, raylet, agents, Serve's controller, the replica
        assert replica["pid"] in started, (replica, started)
        assert group_members(head_pid)  # what supervisord's stopasgroup/killasgroup reach
        assert replica["node"] in active_nodes(address)

    stop = daemon.ctl("stop", PROGRAM)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert daemon.info(PROGRAM)["statename"] == "STOPPED"
    wait_until(lambda: not living(started), 60, "every process the head started to exit")
    assert not group_members(head_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=5).close()
