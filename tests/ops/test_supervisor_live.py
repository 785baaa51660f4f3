"""The real app under the real supervisord, with the shipped program section (acceptance 1).

The test config is the shipped supervisord.conf with its runtime paths moved into a temp folder; it includes
the shipped supervisor/z-image-turbo.conf unchanged, then a local.conf made by supervisor/local_conf.py (the
same code setup_and_start.sh uses) that points the app at the tiny model, a free port and a temp log. Only the
watchdog's timing is shortened (probe every second, 5 s timeout, three failures) so a hang is found in seconds
instead of minutes. Its start-up allowance is the shipped rule (failures count once the port accepted a
connection) with a bound far above any real start, so no test depends on how fast this machine is; the first
start happens under a busy loop on every core to prove it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ops.supervisor_helpers import (REPO_ROOT, SUPERVISORD_CONF, Supervisord, free_port, http_status,
                                          load_script, wait_until)

pytestmark = pytest.mark.slow

local_conf = load_script(REPO_ROOT / "supervisor" / "local_conf.py")
PROGRAM = "z-image-turbo"
WATCHDOG = "z-image-turbo-watchdog"
FAST_WATCHDOG = " --interval 1 --timeout 5 --failures 3 --start-timeout 600"
STEP_DELAY = 0.6  # seconds per denoising step, so a generation is still running when we stop the app


def write_test_config(folder: Path, settings: dict[str, str], log_file: Path) -> Path:
    """supervisord.conf for a temp folder: shipped sections, shipped program file, generated overrides."""
    run = folder / "run"
    run.mkdir(parents=True)
    text = SUPERVISORD_CONF.read_text().replace("%(here)s/run/", f"{run}/")
    shipped_include = "files = z-image-turbo.conf run/local.conf"
    assert shipped_include in text
    text = text.replace(shipped_include, f"files = {REPO_ROOT}/supervisor/z-image-turbo.conf {run}/local.conf")
    sections = local_conf.overrides(local_conf.read_shipped(), sys.executable, str(log_file), settings)
    sections[f"eventlistener:{WATCHDOG}"]["command"] += FAST_WATCHDOG
    sections[f"eventlistener:{WATCHDOG}"]["stderr_logfile"] = str(run / "z-image-turbo-watchdog.log")
    (run / "local.conf").write_text(local_conf.render(sections, "test overrides"))
    config = folder / "supervisord.conf"
    config.write_text(text)
    return config


class CpuLoad:
    """A busy loop on every core, standing in for a machine busy with other work."""

    def __init__(self) -> None:
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                          for _ in range(max(2, os.cpu_count() or 1))]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    folder = tmp_path_factory.mktemp("supervisor")
    port = free_port()
    settings = {"ZIMAGE_WEIGHTS_DIR": str(tiny_model_dir / "hf"), "ZIMAGE_PORT": str(port),
                "ZIMAGE_OUTPUT_DIR": str(folder / "outputs"), "ZIMAGE_DEVICE": "cpu",
                "ZIMAGE_DEBUG_STEP_DELAY": str(STEP_DELAY)}
    log_file = folder / "z-image-turbo.log"
    config = write_test_config(folder, settings, log_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "SUPERVISOR_"))}
    load = CpuLoad()  # until the first test saw the app ready
    try:
        daemon = Supervisord(config, folder / "run" / "supervisor.sock", env).start()
        try:
            yield {"daemon": daemon, "url": f"http://127.0.0.1:{port}", "log": log_file, "run": folder / "run",
                   "load": load}
        finally:
            daemon.stop()
    finally:
        load.stop()


def _wait_ready(stack: dict, timeout: float = 150) -> dict:
    daemon = stack["daemon"]
    wait_until(lambda: daemon.info(PROGRAM)["statename"] == "RUNNING", timeout, "the program to be RUNNING")
    wait_until(lambda: http_status(stack["url"] + "/health/ready") == 200, timeout, "/health/ready to be 200")
    return daemon.info(PROGRAM)


def test_program_runs_and_gets_ready(stack: dict) -> None:
    try:
        info = _wait_ready(stack, timeout=400)  # every core busy: slow, but never killed for it
    finally:
        stack["load"].stop()
    supervisord_log = (stack["run"] / "supervisord.log").read_text()
    assert supervisord_log.count(f"spawned: '{PROGRAM}'") == 1, supervisord_log
    watchdog_log = stack["run"] / "z-image-turbo-watchdog.log"
    wait_until(lambda: f"{PROGRAM} (pid {info['pid']}) is listening" in watchdog_log.read_text(), 30,
               "the watchdog to see the port open (its next TICK_5)")
    assert "is hung" not in watchdog_log.read_text()
    status = stack["daemon"].ctl("status")
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
    assert "RUNNING" in lines[PROGRAM] and f"pid {info['pid']}" in lines[PROGRAM], status.stdout
    assert "RUNNING" in lines[WATCHDOG], status.stdout
    assert http_status(stack["url"] + "/health/live") == 200


def test_kill_9_is_followed_by_a_restart(stack: dict) -> None:
    old = _wait_ready(stack)
    os.kill(old["pid"], signal.SIGKILL)
    wait_until(lambda: stack["daemon"].info(PROGRAM)["pid"] not in (0, old["pid"]), 60, "a new pid")
    new = _wait_ready(stack)
    assert new["pid"] != old["pid"]
    supervisord_log = (stack["run"] / "supervisord.log").read_text()
    assert f"exited: {PROGRAM} (terminated by SIGKILL; not expected)" in supervisord_log


def test_a_hung_app_is_killed_by_the_watchdog_and_comes_back(stack: dict) -> None:
    old = _wait_ready(stack)
    os.kill(old["pid"], signal.SIGSTOP)  # still RUNNING for supervisord, but answers nothing
    try:
        wait_until(lambda: stack["daemon"].info(PROGRAM)["pid"] not in (0, old["pid"]), 90,
                   "the watchdog to replace the hung process")
    finally:
        try:
            os.kill(old["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    watchdog_log = (stack["run"] / "z-image-turbo-watchdog.log").read_text()
    assert f"{PROGRAM} (pid {old['pid']}) is hung" in watchdog_log
    assert "probe 3/3" in watchdog_log
    _wait_ready(stack)


def _generate(url: str, outcome: dict) -> None:
    request = urllib.request.Request(url + "/v1/images/generations", method="POST",
                                     data=json.dumps({"prompt": "a red fox", "size": "256x256", "steps": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outcome["status"], outcome["body"] = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        outcome["status"], outcome["body"] = error.code, json.loads(error.read())
    except Exception as error:  # noqa: BLE001 - a broken connection is exactly what the test must not see
        outcome["error"] = repr(error)


def test_stop_during_a_generation_finishes_it_and_exits_cleanly(stack: dict) -> None:
    pid = _wait_ready(stack)["pid"]
    outcome: dict = {}
    client = threading.Thread(target=_generate, args=(stack["url"], outcome))
    client.start()
    wait_until(lambda: json.loads(urllib.request.urlopen(stack["url"] + "/health/live", timeout=3).read())
               ["running_for_seconds"] > 0, 60, "the generation to start")
    stopped = stack["daemon"].ctl("stop", PROGRAM)
    client.join(timeout=150)
    assert stopped.returncode == 0 and f"{PROGRAM}: stopped" in stopped.stdout, stopped
    assert "error" not in outcome, outcome
    if outcome["status"] == 200:
        assert len(outcome["body"]["data"]) == 1 and outcome["body"]["data"][0]["b64_json"]
    else:  # cancelled within the app's grace period: an explained error, not a dropped connection
        assert outcome["status"] == 503 and outcome["body"]["error"]["message"], outcome
    info = stack["daemon"].info(PROGRAM)
    assert info["statename"] == "STOPPED", info
    # Graceful: uvicorn finished its shutdown for this very pid. uvicorn then re-raises the SIGTERM it caught,
    # so supervisord may report "terminated by SIGTERM" instead of "exit status 0"; never a SIGKILL.
    assert f"Finished server process [{pid}]" in stack["log"].read_text()
    last_stop = [line for line in (stack["run"] / "supervisord.log").read_text().splitlines()
                 if f"stopped: {PROGRAM} (" in line][-1]
    assert last_stop.endswith(("(exit status 0)", "(terminated by SIGTERM)")), last_stop


def test_the_log_file_holds_the_app_lines(stack: dict) -> None:
    text = stack["log"].read_text()
    assert "INFO app: serving on http://127.0.0.1:" in text
    assert "engine ready in" in text  # a line from the app's service logger, i.e. stderr went into the log
    assert "job-1 queued from rest" in text
    assert "Finished server process" in text  # the graceful uvicorn exit of the stop test
