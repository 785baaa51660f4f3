"""Put a `supervisorctl` on PATH that controls this checkout's supervisord, so the seed's commands work as written.

    supervisorctl start z-image-turbo        (from any directory, no -c, no activated venv)

The installed file is a tiny sh script: without -c/-s it runs the venv's supervisorctl with
`-c <repository>/supervisor/supervisord.conf` (our socket, supervisor/run/supervisor.sock); with -c or -s it
passes everything through unchanged, so `supervisorctl -c supervisor/supervisord.conf ...` and
`supervisorctl -c /etc/supervisor/supervisord.conf ...` keep meaning what they say.

Where it goes: /usr/local/bin for root, ~/.local/bin for anyone else (no sudo needed), or ZIMAGE_BIN_DIR.
Precedence (decided here, documented in the README, "Operating"):
- a `supervisorctl` in that folder that we did not write (e.g. `pip install supervisor` as root) is left alone;
- one later on PATH (Debian's /usr/bin/supervisorctl) is shadowed for bare calls, because /usr/local/bin comes
  first on the default PATH; it stays reachable as /usr/bin/supervisorctl or with -c, and we say so;
- one earlier on PATH, or the folder missing from PATH, means bare `supervisorctl` is not ours: we say so.

Inside an activated venv the venv's own supervisorctl comes first on PATH; without a config it would try
localhost:9001. supervisorctl looks for <venv>/etc/supervisord.conf first (next to its bin/), so `venv-config`
writes one there that names only our socket.

    python supervisor/ctl_wrapper.py where                      # the default folder for this user
    python supervisor/ctl_wrapper.py install --venv .venv [--bin-dir DIR]
    python supervisor/ctl_wrapper.py venv-config --venv .venv   # bare supervisorctl in the activated venv
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

SUPERVISORD_CONF = Path(__file__).resolve().parent / "supervisord.conf"
SOCKET = Path(__file__).resolve().parent / "run" / "supervisor.sock"  # [unix_http_server] file of that config
COMMAND = "supervisorctl"
# First line after the shebang; a file carrying it is ours to rewrite (a moved checkout, a new venv).
MARKER = "# z-image-turbo supervisorctl wrapper"


def default_bin_dir(uid: int | None = None, home: str | None = None) -> Path:
    """/usr/local/bin for root (on every default PATH), ~/.local/bin otherwise (writable without sudo)."""
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return Path("/usr/local/bin")
    return Path(home or os.path.expanduser("~")) / ".local" / "bin"


def wrapper_text(supervisorctl: Path, config: Path) -> str:
    """The sh script: our config unless the caller names one (-c) or a server (-s)."""
    ctl, conf = shlex.quote(str(supervisorctl)), shlex.quote(str(config))
    return f"""#!/bin/sh
{MARKER}, written by scripts/setup_and_start.sh of {config.parent.parent}
# (rerun that script to rewrite it; delete this file to remove it).
# Without -c/-s: this checkout's supervisord. With them: plain supervisorctl, e.g. for a system supervisord.
for arg in "$@"; do
  case "$arg" in
    -c*|-s*|--configuration|--configuration=*|--serverurl|--serverurl=*) exec {ctl} "$@" ;;
  esac
done
exec {ctl} -c {conf} "$@"
"""


def is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(encoding="utf-8", errors="replace").splitlines()[1]
    except (OSError, IndexError):
        return False


def path_notes(target: Path, search_path: str) -> list[str]:
    """What bare `supervisorctl` resolves to on this PATH, and which other one ours shadows."""
    folders = [Path(folder) for folder in search_path.split(os.pathsep) if folder]
    if target.parent not in folders:
        return [f"!! {target.parent} is not on your PATH, so bare `{COMMAND}` is not this one yet. Add it:",
                f"   export PATH=\"{target.parent}:$PATH\"   (and in ~/.profile; Debian/Ubuntu's ~/.profile adds "
                "~/.local/bin by itself at the next login once the folder exists)"]
    found = [folder / COMMAND for folder in folders
             if (folder / COMMAND).is_file() and os.access(folder / COMMAND, os.X_OK)]
    first = found[0] if found else None
    if first is not None and first != target:
        return [f"!! `{COMMAND}` on your PATH is {first}, found before {target}: call {target} or reorder PATH."]
    others = [str(path) for path in found[1:] if path != target]
    if others:
        return [f"   Bare `{COMMAND}` now controls Z-Image-Turbo; the other one ({others[0]}) still works by its "
                f"full path or with -c, e.g. `{COMMAND} -c /etc/supervisor/supervisord.conf status`."]
    return []


def install(bin_dir: Path, venv: Path, search_path: str) -> list[str]:
    """Write the wrapper into bin_dir unless a foreign supervisorctl is there; return what to tell the user."""
    target = bin_dir / COMMAND
    if target.exists() and not is_ours(target):
        return [f"!! {target} exists and is not ours: left alone. Control the app with",
                f"   {venv / 'bin' / COMMAND} -c {SUPERVISORD_CONF} status|start|stop z-image-turbo",
                "   or set ZIMAGE_BIN_DIR to another folder on your PATH and run this script again."]
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{COMMAND}.tmp")
        temporary.write_text(wrapper_text(venv / "bin" / COMMAND, SUPERVISORD_CONF), encoding="utf-8")
        temporary.chmod(0o755)
        temporary.replace(target)  # atomic: a running `supervisorctl` never reads half a file
    except OSError as error:
        return [f"!! cannot write {target} ({error.strerror}); set ZIMAGE_BIN_DIR to a folder you can write."]
    return [f"Installed {target}: `{COMMAND} status|start|stop|restart z-image-turbo` from any directory."] \
        + path_notes(target, search_path)


def venv_config_text(socket: Path) -> str:
    """A config for the venv's supervisorctl alone: our daemon's socket (supervisord never reads this file)."""
    return f"""; {MARKER}: the venv's supervisorctl (activated venv, no -c) talks to this checkout's supervisord.
; Written by scripts/setup_and_start.sh; delete it to remove it.
[supervisorctl]
serverurl=unix://{socket}
"""


def write_venv_config(venv: Path, socket: Path = SOCKET) -> list[str]:
    """<venv>/etc/supervisord.conf naming `socket`, unless a config we did not write is already there."""
    target = venv / "etc" / "supervisord.conf"
    if target.exists() and MARKER not in target.read_text(encoding="utf-8", errors="replace"):
        return [f"!! {target} exists and is not ours: left alone (inside the activated venv pass "
                f"-c {SUPERVISORD_CONF} to supervisorctl)."]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(venv_config_text(socket), encoding="utf-8")
    except OSError as error:
        return [f"!! cannot write {target} ({error.strerror}): inside the activated venv pass -c {SUPERVISORD_CONF}."]
    return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("where", help="print the default folder for this user")
    install_parser = commands.add_parser("install", help="write the wrapper")
    install_parser.add_argument("--venv", required=True, help="the venv whose supervisorctl runs (made absolute)")
    install_parser.add_argument("--bin-dir", default="", help="target folder (empty: the default for this user)")
    venv_parser = commands.add_parser("venv-config", help="point the venv's own supervisorctl at our daemon")
    venv_parser.add_argument("--venv", required=True, help="the venv whose etc/supervisord.conf is written")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(default_bin_dir())
        return
    if args.command == "venv-config":
        for line in write_venv_config(Path(os.path.abspath(args.venv))):
            print(line)
        return
    bin_dir = Path(os.path.abspath(os.path.expanduser(args.bin_dir))) if args.bin_dir else default_bin_dir()
    for line in install(bin_dir, Path(os.path.abspath(args.venv)), os.environ.get("PATH", "")):
        print(line)


if __name__ == "__main__":
    main()
