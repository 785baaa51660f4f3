"""Ray clusters for the tests: the app on a local cluster this process starts (`ray_app`), and real Ray nodes,
`ray start --block` processes in their own process groups (so every process a node starts can be found and
stopped by group), with token authentication as a real cluster uses.

A plain module (test files import it by name), like app_helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import httpx

from app.settings import REPO_ROOT
from app_helpers import STEP_DELAY, make_settings
from live_server import LiveServer, start_server
from tests.ops.supervisor_helpers import free_port, wait_until

VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"


@contextlib.contextmanager
def ray_app(folder: Path, weights_dir: Path, namespace: str, resources: dict[str, int],
            **settings) -> Iterator[LiveServer]:
    """The app with serving = "ray" on a local cluster of `resources` (ray.init's num_cpus / num_gpus) started by
    this process, ready; the app, Serve and the cluster are stopped afterwards."""
    import ray
    from ray import serve

    ray.init(include_dashboard=False, namespace=namespace, **resources)
    live = start_server(make_settings(folder, weights_dir=weights_dir, serving="ray", debug_step_delay=STEP_DELAY,
                                      **settings))
    try:
        live.wait_ready(timeout=300)
        assert live.service.ready, live.service.unavailable_error
        yield live
    finally:
        live.stop()
        serve.shutdown()
        ray.shutdown()


def cluster_env() -> dict[str, str]:
    """The environment every node and client of a test cluster gets: token authentication on (explicit, as
    supervisor/z-image-turbo-ray.conf sets it) with the user's token file, which `ensure_auth_token` made.
    No RAY_* variable of this process: a ray.init() in an earlier test module leaves some behind."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ZIMAGE_", "RAY_"))}
    env["RAY_AUTH_MODE"] = "token"
    return env


def ensure_auth_token() -> None:
    """~/.ray/auth_token, as `ray get-auth-token --generate` makes it (a no-op when it exists)."""
    subprocess.run([str(RAY), "get-auth-token", "--generate"], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def app_process(folder: Path, token: bool = True, **settings: str) -> Iterator[str]:
    """`python -m app` (as supervisord runs it) with ZIMAGE_* `settings`, joining a cluster with the cluster
    environment (RAY_AUTH_MODE=token: Ray enables tokens by itself only for clusters it starts or finds with
    "auto"; `token=False` leaves it out); yields its URL once the engine is ready or unavailable. Its own
    process: Ray reads the auth mode once per process, and this test process may have run other clusters."""
    port = free_port()
    env = cluster_env()
    if not token:
        env.pop("RAY_AUTH_MODE")
    env = {**env, "ZIMAGE_PORT": str(port), "ZIMAGE_OUTPUT_DIR": str(folder / "outputs"),
           "ZIMAGE_DTYPE": "float32", "ZIMAGE_DEVICE": "cpu", "ZIMAGE_MIN_SIZE": "128",
           "GRADIO_TEMP_DIR": str(folder / "gradio"), **settings}
    log = folder / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _engine_state(url) in ("ready", "unavailable"), 300,
                   f"the app's engine to settle (log: {log})")
        assert process.poll() is None, log.read_text(errors="replace")[-4000:]
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _engine_state(url: str) -> str | None:
    try:
        return httpx.get(url + "/health/live", timeout=5).json()["engine"]
    except httpx.HTTPError:
        return None


def short_temp_dir(prefix: str) -> Path:
    """A temp folder with a short path: Ray's unix sockets inside it must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class RayNode:
    """One `ray start ... --block` process (head or worker) and the process group it leads."""

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "RayNode":
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([str(RAY), "start", *self.args, "--disable-usage-stats", "--block"],
                                            env=cluster_env(), stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGTERM (`ray start --block` stops its node's processes), then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        pgid = self.process.pid
        started = descendants(pgid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not living(started), 30, "the node's processes to exit")
        for pid in living(started):  # never leave a raylet or a worker behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=30)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name ("state ppid pgrp ..."); None when the process is gone or a zombie."""
    try:
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None if fields[0] == "Z" else fields


def _processes() -> dict[int, list[str]]:
    stats = {int(entry.name): _stat(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    return {pid: fields for pid, fields in stats.items() if fields is not None}


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`."""
    return [pid for pid, fields in _processes().items() if int(fields[2]) == pgid]


def descendants(root: int) -> list[int]:
    """`root` and every live process below it. Ray's workers (Serve's controller, the replicas) are the
    raylet's children but lead process groups of their own, so a group does not find them."""
    children: dict[int, list[int]] = {}
    for pid, fields in _processes().items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return living(found)


def living(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not zombies)."""
    return [pid for pid in pids if _stat(pid) is not None]


def cluster_status(address: str) -> subprocess.CompletedProcess:
    """`ray status --address` as an operator would run it."""
    return subprocess.run([str(RAY), "status", f"--address={address}"], env=cluster_env(), capture_output=True,
                          text=True, timeout=60)


def active_nodes(address: str) -> set[str]:
    """Ids of the nodes `ray status` lists as active (none while the head does not answer)."""
    status = cluster_status(address)
    if status.returncode != 0:
        return set()
    active = status.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    return {word[len("node_"):] for word in active.split() if word.startswith("node_")}
