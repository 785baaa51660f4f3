"""Supervisor event listener that kills the app when it stops answering /health/live (a hang).

supervisord only notices a process that exits. A deadlocked worker, a stuck CUDA kernel or a SIGSTOP
leaves the app RUNNING but useless; this listener probes the liveness URL on TICK events and, after
`--failures` bad probes in a row, SIGKILLs the app's process group. `autorestart=true` then respawns it.

Start-up: a (re)started app imports torch and builds its routes before it binds the port, which takes
seconds on an idle machine and minutes on a loaded one. So failures only count once the port of this
very process (supervisord's pid + start time) has accepted a connection, or once `--start-timeout`
passed without that (an app stuck before it ever listens is hung too). No fixed grace to guess.

Races: supervisord's own autorestart may respawn the program between our kill and our startProcess
(Fault ALREADY_STARTED), or the process may exit before our signalProcess (Fault NOT_RUNNING). Both mean
the wanted state is reached, and are logged as such.

Why not superlance's httpok: it restarts on the first failed probe (one slow answer kills an in-flight
image), has no start-up grace (the port is not bound while torch imports, so a tick there restarts a
healthy app), and restarts through stopProcess, which waits `stopwaitsecs` (minutes) on a stopped
process before the SIGKILL.

Protocol (supervisor docs, events.rst): READY on stdout, read one event, answer RESULT; so stdout is
reserved and everything we say goes to stderr, which supervisord writes to stderr_logfile.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from supervisor import childutils
from supervisor.xmlrpc import Faults

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
    start_timeout: float = 600.0


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


def port_accepts(url: str, timeout: float) -> bool:
    """True when the URL's host:port accepts a TCP connection (the app has started listening)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class HealthWatchdog:
    """Counts consecutive failed probes of one program and kills it when the count reaches the limit."""

    def __init__(self, options: WatchdogOptions, rpc: Any,
                 probe_fn: Callable[[str, float], str | None] = probe,
                 listening_fn: Callable[[str, float], bool] = port_accepts,
                 clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.rpc = rpc
        self.probe_fn = probe_fn
        self.listening_fn = listening_fn
        self.clock = clock
        self.failures = 0
        self.last_probe: float | None = None
        self.incarnation: tuple[int, int] | None = None  # (pid, start) of the process we judge
        self.listening = False  # has this incarnation's port accepted a connection yet?

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
        if not self._started_listening(info):
            return
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

    def _started_listening(self, info: dict) -> bool:
        """Whether probes of this process count: its port accepted a connection once, or it had its time."""
        incarnation = (info["pid"], info["start"])
        if incarnation != self.incarnation:  # a new process: it has to open its port again
            self.incarnation, self.listening, self.failures = incarnation, False, 0
        if self.listening:
            return True
        uptime = info["now"] - info["start"]
        if self.listening_fn(self.options.url, self.options.timeout):
            self.listening = True
            logger.info("%s (pid %d) is listening, %.0f s after its start", self.options.program, info["pid"],
                        uptime)
            return True
        if uptime < self.options.start_timeout:
            return False  # still importing / binding the port: "connection refused" means nothing yet
        logger.warning("%s (pid %d) has not opened its port %.0f s after its start", self.options.program,
                       info["pid"], uptime)
        return True

    def kill_and_restart(self, pid: int) -> None:
        """SIGKILL the hung process group; make sure supervisord starts the program again."""
        program = self.options.program
        logger.error("%s (pid %d) is hung: killing its process group so supervisord restarts it", program, pid)
        try:
            os.killpg(pid, signal.SIGKILL)  # supervisord makes each child a process-group leader
        except (ProcessLookupError, PermissionError) as error:
            logger.warning("killpg(%d) failed (%s); asking supervisord to signal the process", pid, error)
            self._call_unless_done(Faults.NOT_RUNNING, "is not running any more",
                                   self.rpc.supervisor.signalProcess, program, "KILL")
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
                self._call_unless_done(Faults.ALREADY_STARTED, "was started by supervisord meanwhile",
                                       self.rpc.supervisor.startProcess, self.options.program, False)
                return
            time.sleep(0.2)
        logger.warning("%s still RUNNING with pid %d after the kill", self.options.program, old_pid)

    def _call_unless_done(self, done_fault: int, done_message: str, method: Callable, *args: Any) -> None:
        """Call an XML-RPC method; the fault saying its goal is already reached (supervisord won the race) is
        the success we wanted, not an error."""
        try:
            method(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != done_fault:
                raise
            logger.info("%s %s (%s): nothing to do", self.options.program, done_message, fault.faultString)


def parse_args(argv: list[str], environ: dict[str, str]) -> WatchdogOptions:
    """Command line -> options; the URL defaults to the app's ZIMAGE_HOST/ZIMAGE_PORT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True, help="supervisor program name to watch")
    parser.add_argument("--url", default=None, help="liveness URL (default: host and port from the app settings)")
    parser.add_argument("--timeout", type=float, default=WatchdogOptions.timeout, help="seconds one probe may take")
    parser.add_argument("--interval", type=float, default=WatchdogOptions.interval, help="seconds between probes")
    parser.add_argument("--failures", type=int, default=WatchdogOptions.failures,
                        help="failed probes in a row before the kill")
    parser.add_argument("--start-timeout", type=float, default=WatchdogOptions.start_timeout,
                        help="failures count once the (re)started app's port accepted a connection, "
                             "or after this many seconds without that")
    args = parser.parse_args(argv)
    return WatchdogOptions(program=args.program, url=args.url or default_url(environ), timeout=args.timeout,
                           interval=args.interval, failures=args.failures, start_timeout=args.start_timeout)


def main(argv: list[str] | None = None) -> None:
    """Run forever as a supervisord event listener."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s watchdog: %(message)s")
    options = parse_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        sys.exit("health_watchdog.py is a supervisord event listener; run it from an [eventlistener:x] section")
    watchdog = HealthWatchdog(options, childutils.getRPCInterface(os.environ))
    logger.info("watching %s via %s (every %.0fs, %d failures, counted once it listens or after %.0fs)",
                options.program, options.url, options.interval, options.failures, options.start_timeout)
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
