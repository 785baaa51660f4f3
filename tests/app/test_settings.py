"""Settings: TOML defaults, ZIMAGE_CONFIG, ZIMAGE_* overrides with typed parsing, one clear error per bad value."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import settings as settings_module
from app.settings import Settings, SettingsError, load_settings, resolve_dtype
from model.request import ENGINE_LIMITS


REPO = Path(__file__).resolve().parents[2]


def test_defaults_come_from_the_settings_dataclass():
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
    code = ("import sys, app.settings, app.fields, app.validation, app.engine_loader, model, model.request, "
            "model.errors, model.options, model.protocol, model.loading.layout; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"

def _default_text(value: object) -> str:
    """A default as the README table and configs/app.toml write it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_configs_app_toml_lists_every_default_as_the_dataclass_has_it():
    """configs/app.toml overrides nothing by default; its commented lines document the Settings defaults."""
    text = (REPO / "configs" / "app.toml").read_text(encoding="utf-8")
    documented = {key: value.strip().strip('"')
                  for key, value in re.findall(r"^# (\w+) = (\"[^\"]*\"|\S+)", text, flags=re.MULTILINE)}
    defaults = {f.name: _default_text(f.default) for f in dataclasses.fields(Settings)}
    assert documented == defaults
    assert load_settings({}) == Settings()  # nothing in the file is active


def test_readme_settings_table_agrees_with_the_defaults():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `ZIMAGE_\w+` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    # An empty text default is written `""` in the table.
    defaults = {f.name: _default_text(f.default) or '""' for f in dataclasses.fields(Settings)}
    assert rows == defaults


def test_settings_work_without_configs_app_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert load_settings({"ZIMAGE_PORT": "7999"}) == Settings(port=7999)


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_the_cpu():
    assert Settings().dtype == "auto"
    assert resolve_dtype("auto", "cuda") == "bfloat16" and resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16" and resolve_dtype("float32", "cuda") == "float32"


@pytest.mark.parametrize("env, words", [
    ({"ZIMAGE_MAX_BATCH": "8"}, ["max_batch", "at most 4", "engine"]),
    ({"ZIMAGE_MAX_STEPS": "51"}, ["max_steps", "at most 50", "engine"]),
])
def test_settings_cannot_raise_the_engines_limits(env: dict, words: list[str]):
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    for word in words:
        assert word in str(caught.value)
    assert ENGINE_LIMITS.batch_size[1] == 4 and ENGINE_LIMITS.steps[1] == 50


def test_speed_settings_are_validated_and_warmup_sizes_parsed():
    settings = load_settings({"ZIMAGE_WARMUP_SIZES": "1024x1024, 768x1344", "ZIMAGE_COMPILE_MODE": "reduce-overhead",
                              "ZIMAGE_FP8_MATMUL": "dynamic", "ZIMAGE_FUSE_PROJECTIONS": "true"})
    assert settings.warmup_size_list == ((1024, 1024), (768, 1344))
    assert (settings.compile_mode, settings.fp8_matmul, settings.fuse_projections) == ("reduce-overhead", "dynamic", True)
    assert Settings().warmup_size_list == ()
    for env, words in (({"ZIMAGE_COMPILE_MODE": "fast"}, ["compile_mode", "reduce-overhead"]),
                       ({"ZIMAGE_FP8_MATMUL": "int8"}, ["fp8_matmul", "dynamic"]),
                       ({"ZIMAGE_WARMUP_SIZES": "1024x1000"}, ["warmup_sizes", "1024x1000", "multiples of 16"]),
                       ({"ZIMAGE_WARMUP_SIZES": "big"}, ["warmup_sizes", "'big'"])):
        with pytest.raises(SettingsError) as caught:
            load_settings(env)
        assert all(word in str(caught.value) for word in words), str(caught.value)
