"""Supervisor event listener that kills the app when it stops answering /health/live (a hang).

supervisord only notices a process that exits. A deadlocked worker, a stuck CUDA kernel or a SIGSTOP
leaves the app RUNNING but useless; this listener probes the liveness URL on TICK events and, after
`--failures` bad probes in a row, SIGKILLs the app's process group. `autorestart=true` then respawns it.

Why not superlance's httpok: it restarts on the first failed probe (one slow answer kills an in-flight
image), has no grace period after a start (the port is not bound while torch imports, so a tick there
restarts a healthy app), and restarts through stopProcess, which waits `stopwaitsecs` (minutes) on a
stopped process before the SIGKILL.

Protocol (supervisor docs, events.rst): READY on stdout, read one event, answer RESULT; so stdout is
reserved and everything we say goes to stderr, which supervisord writes to stderr_logfile.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from supervisor import childutils

logger = logging.getLogger("health_watchdog")

RUNNING = "RUNNING"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WatchdogOptions:
    """How the listener probes and when it gives up on the app."""

    program: str
    url: str
    timeout: float = 10.0
    interval: float = 15.0
    failures: int = 3
    grace: float = 120.0


def default_url(environ: dict[str, str]) -> str:
    """The app's liveness URL from the app's own settings (configs/app.toml + ZIMAGE_*), so both agree."""
    sys.path.insert(0, str(REPO_ROOT))  # supervisor/ and app/ are siblings; the app is not installed
    from app.settings import Settings, SettingsError, load_settings

    try:
        settings = load_settings(environ)
        host, port = settings.host, settings.port
    except SettingsError as error:  # the app will refuse to start too; probe the documented default
        logger.warning("app settings unreadable (%s): probing the default port", error)
        host, port = Settings.host, Settings.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind still answers on loopback
    return f"http://{host}:{port}/health/live"


def probe(url: str, timeout: float) -> str | None:
    """GET the URL; None when it answered 200, else a short reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:  # refused, timed out, reset
        reason = getattr(error, "reason", error)
        return f"{type(reason).__name__}: {reason}"


class HealthWatchdog:
    """Counts consecutive failed probes of one program and kills it when the count reaches the limit."""

    def __init__(self, options: WatchdogOptions, rpc: Any,
                 probe_fn: Callable[[str, float], str | None] = probe,
                 clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.rpc = rpc
        self.probe_fn = probe_fn
        self.clock = clock
        self.failures = 0
        self.last_probe: float | None = None

    def on_tick(self) -> None:
        """Handle one TICK event: maybe probe, maybe kill."""
        now = self.clock()
        if self.last_probe is not None and now - self.last_probe < self.options.interval:
            return
        self.last_probe = now
        info = self.rpc.supervisor.getProcessInfo(self.options.program)
        if info["statename"] != RUNNING:
            self.failures = 0  # supervisord is already dealing with it (starting, backing off, stopped)
            return
        uptime = info["now"] - info["start"]
        if uptime < self.options.grace:
            return  # still importing / binding the port: "connection refused" means nothing yet
        reason = self.probe_fn(self.options.url, self.options.timeout)
        if reason is None:
            if self.failures:
                logger.info("%s answers again after %d failed probe(s)", self.options.url, self.failures)
            self.failures = 0
            return
        self.failures += 1
        logger.warning("probe %d/%d of %s failed: %s", self.failures, self.options.failures,
                       self.options.url, reason)
        if self.failures >= self.options.failures:
            self.failures = 0
            self.kill_and_restart(info["pid"])

    def kill_and_restart(self, pid: int) -> None:
        """SIGKILL the hung process group; make sure supervisord starts the program again."""
        program = self.options.program
        logger.error("%s (pid %d) is hung: killing its process group so supervisord restarts it", program, pid)
        try:
            os.killpg(pid, signal.SIGKILL)  # supervisord makes each child a process-group leader
        except (ProcessLookupError, PermissionError) as error:
            logger.warning("killpg(%d) failed (%s); asking supervisord to signal the process", pid, error)
            self.rpc.supervisor.signalProcess(program, "KILL")
        self._start_if_not_respawned(pid)

    def _start_if_not_respawned(self, old_pid: int, wait_s: float = 10.0) -> None:
        """autorestart=true respawns the program; if it is configured otherwise, start it ourselves."""
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            info = self.rpc.supervisor.getProcessInfo(self.options.program)
            if info["statename"] in ("STARTING", "BACKOFF") or (
                    info["statename"] == RUNNING and info["pid"] != old_pid):
                return
            if info["statename"] in ("EXITED", "STOPPED", "FATAL"):
                logger.info("%s was not respawned (state %s): starting it", self.options.program,
                            info["statename"])
                self.rpc.supervisor.startProcess(self.options.program, False)
                return
            time.sleep(0.2)
        logger.warning("%s still RUNNING with pid %d after the kill", self.options.program, old_pid)


def parse_args(argv: list[str], environ: dict[str, str]) -> WatchdogOptions:
    """Command line -> options; the URL defaults to the app's ZIMAGE_HOST/ZIMAGE_PORT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True, help="supervisor program name to watch")
    parser.add_argument("--url", default=None, help="liveness URL (default: host and port from the app settings)")
    parser.add_argument("--timeout", type=float, default=WatchdogOptions.timeout, help="seconds one probe may take")
    parser.add_argument("--interval", type=float, default=WatchdogOptions.interval, help="seconds between probes")
    parser.add_argument("--failures", type=int, default=WatchdogOptions.failures,
                        help="failed probes in a row before the kill")
    parser.add_argument("--grace", type=float, default=WatchdogOptions.grace,
                        help="seconds after a (re)start during which the app is not probed")
    args = parser.parse_args(argv)
    return WatchdogOptions(program=args.program, url=args.url or default_url(environ), timeout=args.timeout,
                           interval=args.interval, failures=args.failures, grace=args.grace)


def main(argv: list[str] | None = None) -> None:
    """Run forever as a supervisord event listener."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s watchdog: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        sys.exit("health_watchdog.py is a supervisord event listener; run it from an [eventlistener:x] section")
    watchdog = HealthWatchdog(options, childutils.getRPCInterface(os.environ))
    logger.info("watching %s via %s (every %.0fs, %d failures, %.0fs grace)", options.program, options.url,
                options.interval, options.failures, options.grace)
    while True:
        headers, _payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"].startswith("TICK"):
            try:
                watchdog.on_tick()
            except Exception:  # noqa: BLE001 - a listener that dies stops watching; log and keep going
                logger.exception("watchdog tick failed")
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
