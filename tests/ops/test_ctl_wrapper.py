"""supervisor/ctl_wrapper.py: the `supervisorctl` that setup puts on PATH, against a real (minimal) supervisord.

Everything is installed into tmp_path and put first on PATH; the test that covers the default folder only asks
where it would go. The full app behind the wrapper is exercised in test_setup_and_start.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.supervisor_helpers import REPO_ROOT, VENV_BIN, Supervisord, load_script

ctl_wrapper = load_script(REPO_ROOT / "supervisor" / "ctl_wrapper.py")
SETUP_SCRIPT = (REPO_ROOT / "scripts" / "setup_and_start.sh").read_text()


def _path_without_venv() -> str:
    """PATH as a user has it: the test venv's bin (with its own supervisorctl) is not on it."""
    return os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                           if folder and Path(folder) != VENV_BIN)


def _shell(command: str, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """One line exactly as a user types it, from cwd, with bin_dir first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{_path_without_venv()}"
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _minimal_conf(folder: Path) -> Path:
    """A supervisord with one program named like ours (a sleeper), socket and logs in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "supervisord.conf"
    config.write_text(f"""[unix_http_server]
file={folder}/supervisor.sock
[supervisord]
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{folder}/supervisor.sock
[program:z-image-turbo]
command={sys.executable} -c "import time; time.sleep(600)"
startsecs=0
""")
    return config


@pytest.fixture()
def daemon(tmp_path: Path):
    config = _minimal_conf(tmp_path / "daemon")
    running = Supervisord(config, tmp_path / "daemon" / "supervisor.sock").start()
    yield running
    running.stop()


def _write_wrapper(bin_dir: Path, config: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "supervisorctl").write_text(ctl_wrapper.wrapper_text(VENV_BIN / "supervisorctl", config))
    (bin_dir / "supervisorctl").chmod(0o755)


def test_bare_supervisorctl_controls_our_daemon_from_any_directory(daemon: Supervisord, tmp_path: Path) -> None:
    bin_dir, elsewhere = tmp_path / "bin", tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    _write_wrapper(bin_dir, daemon.config)
    stopped = _shell("supervisorctl stop z-image-turbo", elsewhere, bin_dir)
    assert stopped.returncode == 0 and "z-image-turbo: stopped" in stopped.stdout, stopped
    started = _shell("supervisorctl start z-image-turbo", elsewhere, bin_dir)
    assert started.returncode == 0 and "z-image-turbo: started" in started.stdout, started
    assert daemon.info("z-image-turbo")["statename"] == "RUNNING"
    status = _shell("supervisorctl status", Path("/"), bin_dir)
    assert status.stdout.split()[:2] == ["z-image-turbo", "RUNNING"], status


def test_an_explicit_config_or_server_is_passed_through(daemon: Supervisord, tmp_path: Path) -> None:
    """-c/-s mean what they say, so another supervisord (a system one) stays reachable through the wrapper."""
    bin_dir = tmp_path / "bin"
    _write_wrapper(bin_dir, tmp_path / "no-such-dir" / "supervisord.conf")  # bare calls would fail
    by_config = _shell(f"supervisorctl -c {daemon.config} status z-image-turbo", tmp_path, bin_dir)
    assert "RUNNING" in by_config.stdout, by_config
    by_server = _shell(f"supervisorctl --serverurl=unix://{daemon.socket_path} status z-image-turbo", tmp_path,
                       bin_dir)
    assert "RUNNING" in by_server.stdout, by_server
    bare = _shell("supervisorctl status", tmp_path, bin_dir)
    assert bare.returncode != 0 and str(tmp_path / "no-such-dir" / "supervisord.conf") in bare.stderr, bare


def test_default_folder_is_usr_local_bin_for_root_and_local_bin_for_a_normal_user(tmp_path: Path) -> None:
    assert ctl_wrapper.default_bin_dir(uid=0, home=str(tmp_path)) == Path("/usr/local/bin")
    assert ctl_wrapper.default_bin_dir(uid=1000, home=str(tmp_path)) == tmp_path / ".local" / "bin"
    where = subprocess.run([sys.executable, str(REPO_ROOT / "supervisor" / "ctl_wrapper.py"), "where"],
                           env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    expected = Path("/usr/local/bin") if os.getuid() == 0 else tmp_path / ".local" / "bin"
    assert where.stdout.strip() == str(expected)
    # setup passes ZIMAGE_BIN_DIR through, and an empty --bin-dir is that default.
    assert '"$PY" supervisor/ctl_wrapper.py install --venv "$VENV" --bin-dir "${ZIMAGE_BIN_DIR:-}"' in SETUP_SCRIPT


def test_install_writes_a_wrapper_bound_to_this_checkout(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "supervisor" / "ctl_wrapper.py"), "install",
                             "--venv", str(VENV_BIN.parent), "--bin-dir", str(bin_dir)],
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{_path_without_venv()}"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"Installed {bin_dir / 'supervisorctl'}" in result.stdout and "!!" not in result.stdout
    text = (bin_dir / "supervisorctl").read_text()
    assert f"exec {VENV_BIN / 'supervisorctl'} -c {REPO_ROOT / 'supervisor' / 'supervisord.conf'} \"$@\"" in text
    assert os.access(bin_dir / "supervisorctl", os.X_OK)


def test_a_foreign_supervisorctl_in_the_folder_is_left_alone_and_ours_is_rewritten(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    foreign = bin_dir / "supervisorctl"
    foreign.write_text("#!/usr/bin/python3\n# pip's supervisorctl\n")
    notes = ctl_wrapper.install(bin_dir, VENV_BIN.parent, str(bin_dir))
    assert foreign.read_text() == "#!/usr/bin/python3\n# pip's supervisorctl\n"
    assert notes[0] == f"!! {foreign} exists and is not ours: left alone. Control the app with"
    foreign.write_text(ctl_wrapper.wrapper_text(Path("/old/venv/bin/supervisorctl"), Path("/old/supervisord.conf")))
    ctl_wrapper.install(bin_dir, VENV_BIN.parent, str(bin_dir))
    assert "/old/" not in foreign.read_text() and str(REPO_ROOT) in foreign.read_text()


def test_it_says_which_supervisorctl_bare_calls_reach(tmp_path: Path) -> None:
    """Debian's /usr/bin/supervisorctl later on PATH is shadowed (and named); one earlier wins (and is named)."""
    ours, system, earlier = tmp_path / "local-bin", tmp_path / "usr-bin", tmp_path / "earlier"
    for folder in (system, earlier):
        folder.mkdir()
        (folder / "supervisorctl").write_text("#!/bin/sh\n")
        (folder / "supervisorctl").chmod(0o755)
    shadowing = ctl_wrapper.install(ours, VENV_BIN.parent, os.pathsep.join([str(ours), str(system)]))
    assert f"the other one ({system / 'supervisorctl'}) still works by its full path or with -c" in shadowing[1]
    shadowed = ctl_wrapper.install(ours, VENV_BIN.parent, os.pathsep.join([str(earlier), str(ours)]))
    assert shadowed[1] == (f"!! `supervisorctl` on your PATH is {earlier / 'supervisorctl'}, found before "
                           f"{ours / 'supervisorctl'}: call {ours / 'supervisorctl'} or reorder PATH.")
    missing = ctl_wrapper.install(ours, VENV_BIN.parent, str(system))
    assert missing[1] == f"!! {ours} is not on your PATH, so bare `supervisorctl` is not this one yet. Add it:"


def test_an_unwritable_folder_is_explained(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    notes = ctl_wrapper.install(blocker / "bin", VENV_BIN.parent, "")
    assert notes[0].startswith(f"!! cannot write {blocker / 'bin' / 'supervisorctl'} (")
    assert "ZIMAGE_BIN_DIR" in notes[0]


def test_the_activated_venvs_own_supervisorctl_reaches_our_daemon(daemon: Supervisord, tmp_path: Path) -> None:
    """With the venv activated its supervisorctl comes first on PATH; it reads <venv>/etc/supervisord.conf
    before anything else, so bare `supervisorctl status` from any directory reaches our socket, not :9001."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "supervisorctl").symlink_to(VENV_BIN / "supervisorctl")
    before = _shell("supervisorctl status", tmp_path, venv / "bin")
    assert "9001" in before.stdout + before.stderr, before  # what a user saw before
    assert ctl_wrapper.write_venv_config(venv, daemon.socket_path) == []
    status = _shell("supervisorctl status", Path("/"), venv / "bin")
    assert status.stdout.split()[:2] == ["z-image-turbo", "RUNNING"], status
    foreign = tmp_path / "other-venv" / "etc" / "supervisord.conf"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("[supervisorctl]\nserverurl=unix:///elsewhere.sock\n")
    assert ctl_wrapper.write_venv_config(foreign.parent.parent, daemon.socket_path)[0].startswith("!! ")
    assert foreign.read_text() == "[supervisorctl]\nserverurl=unix:///elsewhere.sock\n"
