"""Run the real app (uvicorn + FastAPI + Gradio) in a background thread on a free port, for tests."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import httpx
import uvicorn

from app.server import build_app
from app.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A started server: `url`, the FastAPI `app`, and `service` for white-box checks."""

    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def service(self):
        return self.app.state.service

    def metric(self, name: str) -> float:
        """The value of one sample line of /metrics, e.g. 'zimage_jobs_total{outcome="cancelled"}'."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE).group(1))

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("server did not reach the expected state")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 180.0) -> None:
        self.wait_until(lambda: self.service.engine_state in ("ready", "unavailable"), timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(settings: Settings, load_engine: Callable[[], Any] | None = None) -> LiveServer:
    port = free_port()
    app = build_app(settings, load_engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    live = LiveServer(url=f"http://127.0.0.1:{port}", app=app, server=server, thread=thread)
    live.wait_until(lambda: server.started, timeout=60)
    httpx.get(f"{live.url}/health/live", timeout=10).raise_for_status()
    return live


@contextlib.contextmanager
def running(settings: Settings, load_engine: Callable[[], Any]) -> Iterator[LiveServer]:
    """A started server whose engine has settled (ready or unavailable); stopped on exit."""
    live = start_server(settings, load_engine)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()
