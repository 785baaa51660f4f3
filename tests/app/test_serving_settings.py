"""The serving settings: validated like every other setting, and the default path never loads Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.settings import REPO_ROOT, Settings, SettingsError, load_settings


def test_local_serving_is_the_default_with_one_job_slot():
    settings = load_settings({})
    assert settings.serving == "local" and settings.job_slots == 1 and settings.mcp_server is False


def test_ray_serving_runs_one_job_per_replica_up_to_the_autoscaling_bound():
    assert Settings(serving="ray", ray_min_replicas=1, ray_max_replicas=3).job_slots == 3


@pytest.mark.parametrize("changes, words", [
    ({"serving": "k8s"}, ["serving", "local", "ray"]),
    ({"ray_min_replicas": 3, "ray_max_replicas": 2}, ["ray_min_replicas", "ray_max_replicas"]),
    ({"ray_max_replicas": 0}, ["ray_max_replicas"]),
    ({"ray_gpus_per_replica": -1.0}, ["ray_gpus_per_replica"]),
    ({"ray_upscale_delay_seconds": -1.0}, ["ray_upscale_delay_seconds", ">= 0"]),
    ({"ray_downscale_delay_seconds": -5.0}, ["ray_downscale_delay_seconds", ">= 0"]),
])
def test_bad_serving_settings_name_the_key(changes, words):
    with pytest.raises(SettingsError) as err:
        Settings(**changes)
    assert all(word in str(err.value) for word in words)


def test_environment_selects_ray_serving():
    settings = load_settings({"ZIMAGE_SERVING": "ray", "ZIMAGE_RAY_MAX_REPLICAS": "4",
                              "ZIMAGE_RAY_ADDRESS": "auto"})
    assert (settings.serving, settings.ray_max_replicas, settings.ray_address) == ("ray", 4, "auto")


def test_the_local_app_never_imports_ray(tmp_path):
    """Building the whole app (every door) in the default mode loads no Ray module."""
    code = ("import sys; from app.server import build_app; from app.settings import load_settings;"
            f"build_app(load_settings({{}})); import app.service;"
            "loaded = [m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'app.serving'))];"
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
