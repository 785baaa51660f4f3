"""supervisor/health_watchdog.py decisions, driven with a fake supervisord and a fake probe (no processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from tests.ops.supervisor_helpers import REPO_ROOT, free_port, load_script

watchdog_module = load_script(REPO_ROOT / "supervisor" / "health_watchdog.py")


class FakeSupervisor:
    """getProcessInfo/startProcess/signalProcess of one program, scripted by the test."""

    def __init__(self, pid: int, start: float = 0.0, process: subprocess.Popen | None = None):
        self.process = process  # when given, a real kill of it counts as the kill
        self.info = {"statename": "RUNNING", "pid": pid, "start": start, "now": 1000.0}
        self.after_kill = {"statename": "STARTING", "pid": 0, "start": 0, "now": 1000.0}
        self.calls: list[tuple] = []
        self.killed = False
        self.faults: dict[str, xmlrpc.client.Fault] = {}  # method -> the fault it raises (a race we lose)

    def getProcessInfo(self, name: str) -> dict:
        if self.process is not None and self.process.poll() is not None:
            self.killed = True
        return dict(self.after_kill if self.killed else self.info)

    def startProcess(self, name: str, wait: bool) -> bool:
        self.calls.append(("startProcess", name))
        if "startProcess" in self.faults:
            raise self.faults["startProcess"]
        return True

    def signalProcess(self, name: str, sig: str) -> bool:
        self.calls.append(("signalProcess", name, sig))
        self.killed = True
        if "signalProcess" in self.faults:
            raise self.faults["signalProcess"]
        return True


class FakeRpc:
    def __init__(self, supervisor: FakeSupervisor):
        self.supervisor = supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _watchdog(supervisor: FakeSupervisor, answers: list[str | None], clock: Clock,
              listening: Callable[[], bool] = lambda: True, **options):
    settings = dict(program="z-image-turbo", url="http://x/health/live", timeout=1, interval=10, failures=3,
                    start_timeout=600)
    settings.update(options)
    probes: list[str] = []

    def probe(url: str, timeout: float) -> str | None:
        probes.append(url)
        return answers.pop(0)

    dog = watchdog_module.HealthWatchdog(watchdog_module.WatchdogOptions(**settings), FakeRpc(supervisor),
                                         probe_fn=probe, listening_fn=lambda url, timeout: listening(),
                                         clock=clock)
    return dog, probes


@pytest.fixture()
def sleeper():
    """A real process in its own process group, standing in for the hung app."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_three_failures_in_a_row_kill_the_process_group(sleeper: subprocess.Popen) -> None:
    supervisor = FakeSupervisor(pid=sleeper.pid, process=sleeper)
    clock = Clock()
    dog, probes = _watchdog(supervisor, ["timed out", "HTTP 503", "timed out"], clock)
    for _ in range(3):
        clock.now += 10
        assert sleeper.poll() is None
        dog.on_tick()
    assert len(probes) == 3
    assert sleeper.poll() == -signal.SIGKILL
    assert supervisor.calls == []  # autorestart respawns it (STARTING): no startProcess needed


def test_a_good_answer_resets_the_count() -> None:
    supervisor = FakeSupervisor(pid=os.getpid())
    clock = Clock()
    dog, probes = _watchdog(supervisor, ["timed out", "timed out", None, "timed out", "timed out"], clock)
    for _ in range(5):
        clock.now += 10
        dog.on_tick()
    assert len(probes) == 5 and dog.failures == 2  # never reached 3 in a row, so this test process lives


def test_ticks_within_the_interval_do_not_probe() -> None:
    supervisor = FakeSupervisor(pid=os.getpid())
    clock = Clock()
    dog, probes = _watchdog(supervisor, [None, None], clock)
    for step in (10, 5, 4, 1):  # t = 10, 15, 19, 20
        clock.now += step
        dog.on_tick()
    assert len(probes) == 2


def test_not_probed_when_not_running() -> None:
    supervisor = FakeSupervisor(pid=os.getpid())
    supervisor.info.update(statename="BACKOFF", start=0.0)
    clock = Clock()
    dog, probes = _watchdog(supervisor, [], clock)
    clock.now += 10
    dog.on_tick()
    assert probes == []


def test_a_slow_start_is_not_probed_until_its_port_accepts_a_connection() -> None:
    """However long the imports take (a loaded machine), a closed port before the first connection is no hang."""
    supervisor = FakeSupervisor(pid=os.getpid(), start=1000.0)
    port_open = {"now": False}
    clock = Clock()
    dog, probes = _watchdog(supervisor, ["refused", "refused", "refused"], clock,
                            listening=lambda: port_open["now"])
    for _ in range(50):  # 500 s of ticks with the port still closed
        clock.now += 10
        supervisor.info["now"] += 10
        dog.on_tick()
    assert probes == [] and dog.failures == 0
    port_open["now"] = True
    clock.now += 10
    dog.on_tick()
    assert len(probes) == 1 and dog.failures == 1  # listening now: from here on failures count
    port_open["now"] = False  # once it listened, a closed port is a failure like any other
    clock.now += 10
    dog.on_tick()
    assert len(probes) == 2 and dog.failures == 2


def test_a_restarted_process_has_to_open_its_port_again() -> None:
    supervisor = FakeSupervisor(pid=os.getpid(), start=990.0)
    port_open = {"now": True}
    clock = Clock()
    dog, probes = _watchdog(supervisor, ["timed out"], clock, listening=lambda: port_open["now"])
    clock.now += 10
    dog.on_tick()
    assert dog.listening and dog.failures == 1
    supervisor.info.update(pid=os.getpid() + 1, start=995.0)  # supervisord respawned it meanwhile
    port_open["now"] = False
    clock.now += 10
    dog.on_tick()
    assert len(probes) == 1 and dog.failures == 0 and not dog.listening


def test_an_app_that_never_opens_its_port_is_killed_after_the_start_timeout(sleeper: subprocess.Popen) -> None:
    supervisor = FakeSupervisor(pid=sleeper.pid, start=1000.0, process=sleeper)
    clock = Clock()
    dog, probes = _watchdog(supervisor, ["refused"] * 3, clock, listening=lambda: False, start_timeout=100)
    while sleeper.poll() is None and clock.now < 1000:
        clock.now += 10
        supervisor.info["now"] += 10
        dog.on_tick()
    assert sleeper.poll() == -signal.SIGKILL
    assert len(probes) == 3 and 100 <= supervisor.info["now"] - 1000.0 <= 130


def test_unkillable_pid_falls_back_to_supervisord_and_starts_when_not_respawned() -> None:
    supervisor = FakeSupervisor(pid=2 ** 22 + 12345)  # no such process: killpg fails
    supervisor.after_kill = {"statename": "EXITED", "pid": 0, "start": 0, "now": 1000.0}
    clock = Clock()
    dog, _ = _watchdog(supervisor, ["timed out"], clock, failures=1)
    clock.now += 10
    dog.on_tick()
    assert supervisor.calls == [("signalProcess", "z-image-turbo", "KILL"), ("startProcess", "z-image-turbo")]


def test_losing_the_restart_race_to_supervisord_is_a_success(caplog: pytest.LogCaptureFixture) -> None:
    """autorestart respawned it between our look and our startProcess: ALREADY_STARTED, no traceback."""
    supervisor = FakeSupervisor(pid=2 ** 22 + 12345)
    supervisor.after_kill = {"statename": "EXITED", "pid": 0, "start": 0, "now": 1000.0}
    supervisor.faults["startProcess"] = xmlrpc.client.Fault(60, "ALREADY_STARTED: z-image-turbo")
    supervisor.faults["signalProcess"] = xmlrpc.client.Fault(70, "NOT_RUNNING: z-image-turbo")
    clock = Clock()
    dog, _ = _watchdog(supervisor, ["timed out"], clock, failures=1)
    clock.now += 10
    with caplog.at_level("INFO", logger="health_watchdog"):
        dog.on_tick()
    assert supervisor.calls == [("signalProcess", "z-image-turbo", "KILL"), ("startProcess", "z-image-turbo")]
    messages = [record.getMessage() for record in caplog.records]
    assert "z-image-turbo is not running any more (NOT_RUNNING: z-image-turbo): nothing to do" in messages
    assert "z-image-turbo was started by supervisord meanwhile (ALREADY_STARTED: z-image-turbo): nothing to do" \
        in messages
    assert not any(record.exc_info for record in caplog.records)


def test_other_supervisord_faults_still_surface() -> None:
    supervisor = FakeSupervisor(pid=2 ** 22 + 12345)
    supervisor.after_kill = {"statename": "EXITED", "pid": 0, "start": 0, "now": 1000.0}
    supervisor.faults["startProcess"] = xmlrpc.client.Fault(50, "SPAWN_ERROR: z-image-turbo")
    clock = Clock()
    dog, _ = _watchdog(supervisor, ["timed out"], clock, failures=1)
    clock.now += 10
    with pytest.raises(xmlrpc.client.Fault, match="SPAWN_ERROR"):
        dog.on_tick()


def test_probe_tells_ok_from_refused_503_and_silence() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/silent":
                time.sleep(3)  # longer than the probe's timeout: a hung app
            self.send_response(200 if self.path == "/ok" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert watchdog_module.probe(base + "/ok", 1.0) is None
        assert watchdog_module.probe(base + "/hung", 1.0) == "HTTP 503"
        assert "timed out" in watchdog_module.probe(base + "/silent", 0.5)
    finally:
        server.shutdown()
        server.server_close()
    refused = watchdog_module.probe(f"http://127.0.0.1:{free_port()}/health/live", 1.0)
    assert refused is not None and "refused" in refused.lower()


def test_port_accepts_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert watchdog_module.port_accepts(f"http://127.0.0.1:{listener.getsockname()[1]}/health/live", 1.0)
    assert not watchdog_module.port_accepts(f"http://127.0.0.1:{free_port()}/health/live", 1.0)


def test_it_refuses_to_run_outside_supervisord() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_SERVER_URL"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "supervisor" / "health_watchdog.py"), "--program", "x",
                             "--url", "http://127.0.0.1:1/"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "event listener" in result.stderr and "Traceback" not in result.stderr
