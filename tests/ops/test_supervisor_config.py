"""The shipped supervisor files parse offline and say what the README promises (acceptance 2)."""

from __future__ import annotations

import configparser
import inspect
import re
import shutil
import signal
from pathlib import Path

import pytest
import supervisor.options
from supervisor.datatypes import RestartUnconditionally
from supervisor.events import EventTypes
from supervisor.options import ServerOptions

from tests.ops.supervisor_helpers import REPO_ROOT, SUPERVISORD_CONF, realize

SUPERVISOR_DIR = REPO_ROOT / "supervisor"


@pytest.fixture()
def shipped(tmp_path: Path) -> Path:
    """A copy of the two shipped files, without the machine's run/local.conf that setup_and_start.sh writes."""
    folder = tmp_path / "supervisor"
    (folder / "run").mkdir(parents=True)
    for name in ("supervisord.conf", "z-image-turbo.conf"):
        shutil.copy(SUPERVISOR_DIR / name, folder / name)
    return folder


@pytest.fixture()
def options(shipped: Path) -> ServerOptions:
    """supervisord's own parse of the shipped supervisord.conf and the program file it includes."""
    return realize(shipped / "supervisord.conf")


def _process(options: ServerOptions, name: str):
    for group in options.process_group_configs:
        for process in group.process_configs:
            if process.name == name:
                return process
    raise AssertionError(f"no [program:{name}] or listener in {SUPERVISORD_CONF}")


def test_socket_rpc_and_ctl_agree(options: ServerOptions, shipped: Path) -> None:
    socket_file = options.server_configs[0]["file"]
    assert socket_file == str(shipped / "run" / "supervisor.sock")
    assert options.serverurl == "unix://" + socket_file
    assert options.rpcinterface_factories, "[rpcinterface:supervisor] is mandatory for supervisorctl"
    assert options.nodaemon is False


def test_program_section_values(options: ServerOptions, shipped: Path) -> None:
    program = _process(options, "z-image-turbo")
    assert program.command == f"{shipped}/../.venv/bin/python -m app"
    assert program.directory == f"{shipped}/.."
    assert program.autostart is True
    assert program.autorestart is RestartUnconditionally
    assert program.startsecs == 10
    assert program.startretries == 3
    assert program.stopsignal == signal.SIGTERM
    assert program.stopwaitsecs == 120
    assert program.stopasgroup is True and program.killasgroup is True
    assert program.redirect_stderr is True
    assert program.stdout_logfile == "/var/log/z-image-turbo.log"
    assert program.stdout_logfile_maxbytes == 50 * 1024 * 1024
    assert program.stdout_logfile_backups == 5
    assert program.environment["ZIMAGE_WEIGHTS_DIR"] == f"{shipped}/../weights"
    assert program.environment["PYTHONUNBUFFERED"] == "1"
    assert program.environment["HF_HUB_OFFLINE"] == "1"


def test_watchdog_listener_values(options: ServerOptions, shipped: Path) -> None:
    watchdog = _process(options, "z-image-turbo-watchdog")
    assert watchdog.command.split()[1:] == [str(shipped / "health_watchdog.py"), "--program", "z-image-turbo"]
    assert watchdog.directory == f"{shipped}/.."
    assert watchdog.redirect_stderr is False, "stdout of a listener is the event protocol"
    assert watchdog.autorestart is RestartUnconditionally
    group = next(g for g in options.process_group_configs if g.name == "z-image-turbo-watchdog")
    assert group.pool_events == [EventTypes.TICK_5]


def _keys_supervisor_reads() -> set[str]:
    """Every section key supervisor/options.py reads: get(section, 'key') and the '%s_logfile...' family."""
    source = Path(inspect.getsourcefile(supervisor.options)).read_text()
    keys = set(re.findall(r"get\(section, *'(\w+)'", source))
    for suffix in re.findall(r"'%s_(\w+)' % k", source):
        keys |= {f"stdout_{suffix}", f"stderr_{suffix}"}
    return keys


def test_every_key_is_one_supervisor_reads() -> None:
    """supervisord ignores unknown keys silently (logfile_maxbytes in [program:x] does nothing), so check them."""
    known = _keys_supervisor_reads()
    assert {"stdout_logfile_maxbytes", "stopasgroup", "events"} <= known  # the extraction itself works
    assert "logfile_maxbytes" not in known
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(SUPERVISOR_DIR / "z-image-turbo.conf")
    assert parser.sections() == ["program:z-image-turbo", "eventlistener:z-image-turbo-watchdog"]
    for section in parser.sections():
        unknown = set(parser.options(section)) - known
        assert not unknown, f"[{section}] has keys supervisor never reads: {sorted(unknown)}"


def test_watchdog_command_line_matches_its_parser() -> None:
    from tests.ops.supervisor_helpers import load_script
    watchdog = load_script(SUPERVISOR_DIR / "health_watchdog.py")
    # The default URL comes from the app's own settings, so a port set by ZIMAGE_PORT is the one probed.
    options = watchdog.parse_args(["--program", "z-image-turbo"], {"ZIMAGE_PORT": "7999", "ZIMAGE_HOST": "0.0.0.0"})
    assert options.url == "http://127.0.0.1:7999/health/live"
    assert (options.failures, options.interval, options.timeout, options.start_timeout) == (3, 15.0, 10.0, 600.0)


def test_local_overrides_survive_supervisors_own_parser(shipped: Path) -> None:
    """Settings with commas, spaces, % and quotes reach the app unchanged through run/local.conf."""
    from tests.ops.supervisor_helpers import load_script
    local_conf = load_script(SUPERVISOR_DIR / "local_conf.py")
    settings = {"ZIMAGE_WEIGHTS_DIR": "/data/my weights, v2/100%", "ZIMAGE_OUTPUT_DIR": 'out "today" 1',
                "ZIMAGE_LORA_DIR": "it's/loras", "ZIMAGE_VENV": "not for the app"}
    log_file = str(shipped / "run" / "z.log")  # supervisord insists that a log's folder exists
    text = local_conf.local_conf("/opt/venv/bin/python", log_file, settings)
    (shipped / "run" / "local.conf").write_text(text)
    options = realize(shipped / "supervisord.conf")
    program = _process(options, "z-image-turbo")
    assert program.command == "/opt/venv/bin/python -m app"
    assert program.stdout_logfile == log_file
    for key in ("ZIMAGE_WEIGHTS_DIR", "ZIMAGE_OUTPUT_DIR", "ZIMAGE_LORA_DIR"):
        assert program.environment[key] == settings[key]
    assert "ZIMAGE_VENV" not in program.environment
    assert program.environment["HF_HUB_OFFLINE"] == "1"  # shipped defaults are kept
    assert program.stopwaitsecs == 120 and program.autorestart is RestartUnconditionally  # policies untouched
    watchdog = _process(options, "z-image-turbo-watchdog")
    assert watchdog.command.startswith("/opt/venv/bin/python ")
    assert watchdog.environment["ZIMAGE_WEIGHTS_DIR"] == settings["ZIMAGE_WEIGHTS_DIR"]


def test_a_value_supervisor_cannot_carry_is_refused_with_a_reason() -> None:
    from tests.ops.supervisor_helpers import load_script
    local_conf = load_script(SUPERVISOR_DIR / "local_conf.py")
    with pytest.raises(ValueError, match="ZIMAGE_OUTPUT_DIR=.*supervisor cannot carry this value"):
        local_conf.format_environment({"ZIMAGE_OUTPUT_DIR": """both ' and " quotes"""})
