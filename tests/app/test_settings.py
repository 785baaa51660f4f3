"""Settings: TOML defaults, ZIMAGE_CONFIG, ZIMAGE_* overrides with typed parsing, one clear error per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings


REPO = Path(__file__).resolve().parents[2]


def test_defaults_come_from_configs_app_toml():
    settings = load_settings({})
    assert (settings.host, settings.port) == ("127.0.0.1", 7860)
    assert (settings.min_size, settings.max_size, settings.queue_size) == (256, 2048, 8)
    assert settings.warmup is True and settings.debug_step_delay == 0.0
    assert settings.memory_mode == "auto" and settings.compile_blocks is False


def test_environment_overrides_are_parsed_to_the_field_types():
    settings = load_settings({"ZIMAGE_PORT": "7861", "ZIMAGE_WARMUP": "off", "ZIMAGE_WEIGHTS_DIR": "/data/w",
                              "ZIMAGE_WATCHDOG_SECONDS": "12.5", "ZIMAGE_DEVICE": "cpu"})
    assert settings.port == 7861 and settings.warmup is False
    assert settings.weights_dir == Path("/data/w") and settings.watchdog_seconds == 12.5
    assert settings.device == "cpu"


def test_zimage_config_points_at_another_file(tmp_path: Path):
    config = tmp_path / "other.toml"
    config.write_text('[server]\nport = 9000\n[queue]\nqueue_size = 2\n')
    settings = load_settings({"ZIMAGE_CONFIG": str(config), "ZIMAGE_QUEUE_SIZE": "5"})
    assert settings.port == 9000 and settings.queue_size == 5  # the environment wins over the file


@pytest.mark.parametrize("env, words", [
    ({"ZIMAGE_PORT": "seventy"}, ["port", "ZIMAGE_PORT"]),
    ({"ZIMAGE_PORT": "70000"}, ["port", "65535"]),
    ({"ZIMAGE_DTYPE": "int8"}, ["dtype", "bfloat16"]),
    ({"ZIMAGE_DTYPE": "float16"}, ["dtype", "bfloat16", "float32"]),
    ({"ZIMAGE_MEMORY_MODE": "tiny"}, ["memory_mode", "balanced", "low"]),
    ({"ZIMAGE_COMPILE_BLOCKS": "sometimes"}, ["compile_blocks", "true or false"]),
    ({"ZIMAGE_LOG_LEVEL": "loud"}, ["log_level", "debug"]),
    ({"ZIMAGE_WARMUP": "maybe"}, ["warmup", "true or false"]),
    ({"ZIMAGE_MIN_SIZE": "100"}, ["min_size", "multiples of 16"]),
    ({"ZIMAGE_QUEUE_SIZE": "0"}, ["queue_size", "at least 1"]),
    ({"ZIMAGE_CONFIG": "/nonexistent/app.toml"}, ["/nonexistent/app.toml", "ZIMAGE_CONFIG"]),
])
def test_bad_values_give_one_clear_error(env: dict, words: list[str]):
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    for word in words:
        assert word in str(caught.value)


def test_unknown_toml_key_is_an_error(tmp_path: Path):
    config = tmp_path / "typo.toml"
    config.write_text('[server]\nprot = 9000\n')
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings({"ZIMAGE_CONFIG": str(config)})


def test_settings_and_request_types_load_without_torch():
    """The app's settings and the engine's request types import no torch (the engine itself loads lazily)."""
    code = ("import sys, app.settings, model, model.request, model.errors, model.options; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"