"""supervisor/z-image-turbo-ray.conf: parsed as supervisord parses it next to the shipped files, and
every flag it gives `ray start` exists in the pinned Ray's CLI."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from tests.ops.supervisor_helpers import REPO_ROOT, realize

SUPERVISOR_DIR = REPO_ROOT / "supervisor"
RAY_CONF = "z-image-turbo-ray.conf"


def _processes(tmp_path: Path) -> dict:
    folder = tmp_path / "supervisor"
    (folder / "run").mkdir(parents=True)
    for name in ("supervisord.conf", "z-image-turbo.conf", RAY_CONF):
        shutil.copy(SUPERVISOR_DIR / name, folder / name)
    main = folder / "supervisord.conf"
    text = main.read_text(encoding="utf-8")
    assert "files = z-image-turbo.conf " in text
    # The README's instruction: add the Ray file to [include].
    main.write_text(text.replace("files = z-image-turbo.conf ", f"files = z-image-turbo.conf {RAY_CONF} "))
    options = realize(main)
    return {p.name: p for group in options.process_group_configs for p in group.process_configs}


def test_the_head_runs_in_the_foreground_before_the_app_and_is_stopped_as_a_group(tmp_path: Path):
    processes = _processes(tmp_path)
    head, app = processes["z-image-turbo-ray-head"], processes["z-image-turbo"]
    argv = shlex.split(head.command)
    assert argv[0] == str(tmp_path / "supervisor" / ".." / ".venv" / "bin" / "ray")
    assert argv[1:3] == ["start", "--head"] and "--block" in argv
    assert head.priority < app.priority
    assert head.autorestart and head.stopasgroup and head.killasgroup
    # Token authentication always on: Ray would otherwise turn it on only when ~/.ray/auth_token exists.
    assert head.environment["RAY_AUTH_MODE"] == "token"
    assert head.stdout_logfile == str(tmp_path / "supervisor" / "run" / "z-image-turbo-ray-head.log")
    # The app program itself is unchanged: Ray mode is chosen in configs/app.toml.
    assert "ZIMAGE_SERVING" not in app.environment


def test_every_ray_start_flag_exists(tmp_path: Path):
    from ray.scripts.scripts import start

    known = {opt for param in start.params for opt in param.opts + param.secondary_opts}
    flags = [arg.split("=")[0] for arg in shlex.split(_processes(tmp_path)["z-image-turbo-ray-head"].command)
             if arg.startswith("--")]
    assert flags and set(flags) <= known, set(flags) - known
