"""scripts/smoke.py and setup_and_start.sh --print-system-conf, run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.ops.supervisor_helpers import REPO_ROOT, realize


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_")}
    env.update(overrides)
    return env


def test_smoke_generates_one_image_and_prints_stage_timings(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.png"
    result = subprocess.run([sys.executable, "scripts/smoke.py", "--size", "256x256", "--out", str(out)],
                            cwd=REPO_ROOT, env=_env(ZIMAGE_WEIGHTS_DIR=str(tiny_model_dir / "comfy")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = {line.split(":")[0] for line in result.stdout.splitlines()}
    assert {"load", "warmup", "text_encoding", "denoising", "vae_decode", "total", "per step", "image"} <= lines
    assert Image.open(out).size == (256, 256)


def test_smoke_without_weights_says_where_it_looked(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "scripts/smoke.py"], cwd=REPO_ROOT,
                            env=_env(ZIMAGE_WEIGHTS_DIR=str(tmp_path / "nowhere")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    # The message names the folder (as every client sees it); the log line before it has the full path.
    assert "Model weights not found. Looked in: nowhere." in result.stderr
    assert f"no usable weights in {tmp_path / 'nowhere'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_system_conf_is_self_contained_and_parses(tmp_path: Path) -> None:
    """What README tells root to put into /etc/supervisor/conf.d/: absolute paths, /var/log, shipped policies."""
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(["bash", "scripts/setup_and_start.sh", "--print-system-conf"], cwd=REPO_ROOT,
                            env=_env(ZIMAGE_VENV=str(venv), ZIMAGE_PORT="7870"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "z-image-turbo.conf").write_text(result.stdout)
    (tmp_path / "supervisord.conf").write_text(
        f"[supervisord]\nlogfile={tmp_path}/s.log\npidfile={tmp_path}/s.pid\n[include]\nfiles = conf.d/*.conf\n")
    options = realize(tmp_path / "supervisord.conf")
    processes = {g.name: g.process_configs[0] for g in options.process_group_configs}
    assert set(processes) == {"z-image-turbo", "z-image-turbo-watchdog"}
    program = processes["z-image-turbo"]
    assert program.command == f"{venv}/bin/python -m app"
    assert program.directory == str(REPO_ROOT)
    assert program.stdout_logfile == "/var/log/z-image-turbo.log"
    assert program.stopwaitsecs == 120 and program.stopasgroup and program.killasgroup
    assert program.environment["ZIMAGE_PORT"] == "7870"
    assert program.environment["ZIMAGE_WEIGHTS_DIR"] == str(REPO_ROOT / "weights")
    watchdog = processes["z-image-turbo-watchdog"]
    assert watchdog.command == f"{venv}/bin/python {REPO_ROOT}/supervisor/health_watchdog.py --program z-image-turbo"
    assert watchdog.environment["ZIMAGE_PORT"] == "7870"
