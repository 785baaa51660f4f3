"""Helpers for the ops tests: parse supervisor configs, run a private supervisord, wait for HTTP answers."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from types import ModuleType
from typing import Callable

from supervisor.options import ServerOptions
from supervisor.xmlrpc import SupervisorTransport

REPO_ROOT = Path(__file__).resolve().parents[2]
SUPERVISORD_CONF = REPO_ROOT / "supervisor" / "supervisord.conf"
VENV_BIN = Path(sys.executable).parent


def realize(config: Path) -> ServerOptions:
    """Parse a supervisord config exactly as supervisord does at start-up (no process is started)."""
    options = ServerOptions()
    options.realize(args=["-c", str(config)])
    return options


def load_script(path: Path) -> ModuleType:
    """Import a script file (scripts/ and supervisor/ are not packages)."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, every: float = 0.3):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - retried until the deadline, reported then
            last_error = error
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")


def http_status(url: str, timeout: float = 3.0) -> int | None:
    """Status code of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


class Supervisord:
    """A private supervisord started with `-n` from a config file; always stopped by `stop()`."""

    def __init__(self, config: Path, socket_path: Path, env: dict[str, str] | None = None):
        self.config = config
        self.socket_path = socket_path
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> "Supervisord":
        self.process = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-n", "-c", str(self.config)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._state() == "RUNNING", 60, "supervisord to answer on its socket")
        return self

    @property
    def rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _state(self) -> str:
        return self.rpc.supervisor.getState()["statename"]

    def info(self, name: str) -> dict:
        return self.rpc.supervisor.getProcessInfo(name)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run supervisorctl against this daemon's config."""
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=180)

    def stop(self) -> None:
        """SIGTERM supervisord (it stops its children first); SIGKILL everything if that hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        children = self._child_pids()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=150)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in children:  # belt and braces: never leave an app server behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _child_pids(self) -> list[int]:
        try:
            return [info["pid"] for info in self.rpc.supervisor.getAllProcessInfo() if info["pid"]]
        except Exception:  # noqa: BLE001 - daemon already gone: nothing to collect
            return []
