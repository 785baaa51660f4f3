"""Runtime settings: the Settings defaults, overlaid with configs/app.toml (optional; or the file ZIMAGE_CONFIG
names) and then ZIMAGE_* environment variables. The defaults are written once, in the dataclass below;
configs/app.toml and the README table document them and a test keeps them in agreement."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from model.options import ATTENTION_BACKENDS, COMPILE_MODES, FP8_MATMULS, MEMORY_MODES
from model.request import ENGINE_LIMITS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "app.toml"
ENV_PREFIX = "ZIMAGE_"

DEVICES = ("auto", "cpu", "cuda")
# float16 is not offered: the DiT's activations overflow it (black / NaN images); bf16 has the range.
# "auto" = bfloat16 on CUDA, float32 on the CPU (CPUs without bf16 units run float32 faster).
DTYPES = ("auto", "bfloat16", "float32")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# "local": this process loads the engine (one GPU). "ray": Engine replicas on a Ray cluster, one per GPU.
SERVING_MODES = ("local", "ray")
WARMUP_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting has a value the app cannot use; the message names the key and its source."""


@dataclass(frozen=True)
class Settings:
    """Everything the app reads at start. Field names are the TOML keys and ZIMAGE_<NAME> env vars."""

    host: str = "127.0.0.1"
    port: int = 7860
    log_level: str = "info"
    shutdown_grace_seconds: float = 30.0
    weights_dir: Path = Path("weights")
    device: str = "auto"
    dtype: str = "auto"
    memory_mode: str = "auto"
    attention: str = "auto"
    compile_blocks: bool = False
    # Speed options (README, "Speed"): fused q/k/v and w1/w3 matmuls; torch.compile of the whole step as one
    # graph ("off" or a model.options.COMPILE_MODES mode); fp8 GEMM for fp8-stored projections.
    fuse_projections: bool = False
    compile_mode: str = "off"
    fp8_matmul: str = "weight-only"
    warmup: bool = True
    # Sizes warmed up (and, with compile_mode, compiled) at start, "WIDTHxHEIGHT" comma-separated;
    # empty = one tiny generation.
    warmup_sizes: str = ""
    lora_dir: Path = Path("loras")
    controlnet_dir: Path = Path("controlnets")
    queue_size: int = 8
    watchdog_seconds: float = 600.0
    min_size: int = 256
    max_size: int = 2048
    max_batch: int = 4
    max_steps: int = 50
    max_prompt_tokens: int = 1024
    max_prompt_chars: int = 20000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096
    output_dir: Path = Path("outputs")
    serving: str = "local"
    # "" = start a private Ray instance in this process; "auto" = the cluster `ray start --head` made on this
    # machine; "HOST:6379" = a cluster's head node.
    ray_address: str = ""
    ray_min_replicas: int = 1
    ray_max_replicas: int = 1
    ray_gpus_per_replica: float = 1.0
    ray_max_queued_requests: int = 4
    # Autoscaling (ray_min_replicas < ray_max_replicas): how long the load must stay above / below one job per
    # replica before Serve adds / removes one. A GPU replica takes a while to load its weights, so downscaling
    # waits long enough (Serve's default, 10 minutes) not to drop replicas between bursts.
    ray_upscale_delay_seconds: float = 30.0
    ray_downscale_delay_seconds: float = 600.0
    mcp_server: bool = False
    # Live previews of the image forming (a small JPEG after a step, at most every 0.3 s); off saves the cost.
    previews: bool = True
    # Retention, applied after every save so the disk cannot fill: the newest this many images are kept
    # (0 = no limit), and images older than this many days are deleted (0 = no limit).
    history_max_images: int = 5000
    history_max_days: float = 0.0
    # Test/debug knob: seconds slept after every denoising step so tests can observe queues and
    # press Stop; slept where the engine runs (app.engine_loader.SlowedSteps). Never set it in production.
    debug_step_delay: float = 0.0
    # Security (app.security, app.auth; README "Security"). Lists are comma-separated names.
    allowed_hosts: str = ""      # extra Host names this server answers to ("*" = any: no rebinding guard)
    cors_origins: str = ""       # origins whose pages may call the API cross-origin (none by default)
    api_key: str = field(default="", repr=False)  # set via ZIMAGE_API_KEY; empty = no key (loopback use)

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("memory_mode", self.memory_mode, MEMORY_MODES)
        _check_choice("attention", self.attention, ATTENTION_BACKENDS)
        _check_choice("log_level", self.log_level, LOG_LEVELS)
        _check_choice("serving", self.serving, SERVING_MODES)
        _check_choice("compile_mode", self.compile_mode, ("off", *COMPILE_MODES))
        _check_choice("fp8_matmul", self.fp8_matmul, FP8_MATMULS)
        self.warmup_size_list  # a malformed list is a SettingsError at start, not at warm-up
        for name in ("port", "queue_size", "min_size", "max_size", "max_batch", "max_steps",
                     "max_prompt_tokens", "max_prompt_chars", "max_upload_bytes", "max_upload_pixels",
                     "ray_min_replicas", "ray_max_replicas", "ray_max_queued_requests"):
            if getattr(self, name) < 1:
                raise SettingsError(f"setting {name} must be at least 1, got {getattr(self, name)}")
        for name, engine_field in (("max_batch", "batch_size"), ("max_steps", "steps")):
            limit = ENGINE_LIMITS.range(engine_field)[1]
            if getattr(self, name) > limit:
                raise SettingsError(f"setting {name} must be at most {limit} (the engine's limit), "
                                    f"got {getattr(self, name)}")
        if self.port > 65535:
            raise SettingsError(f"setting port must be at most 65535, got {self.port}")
        if self.min_size % 16 or self.max_size % 16 or self.min_size > self.max_size:
            raise SettingsError(
                f"min_size ({self.min_size}) and max_size ({self.max_size}) must be multiples of 16 "
                "with min_size <= max_size"
            )
        if self.ray_min_replicas > self.ray_max_replicas:
            raise SettingsError(f"setting ray_min_replicas ({self.ray_min_replicas}) must be at most "
                                f"ray_max_replicas ({self.ray_max_replicas})")
        for name in ("ray_gpus_per_replica", "ray_upscale_delay_seconds", "ray_downscale_delay_seconds"):
            if getattr(self, name) < 0:
                raise SettingsError(f"setting {name} must be >= 0, got {getattr(self, name)}")
        if self.history_max_images < 0 or self.history_max_days < 0:
            raise SettingsError("history_max_images and history_max_days must be >= 0 (0 = no limit)")
        if self.debug_step_delay < 0 or self.watchdog_seconds <= 0 or self.shutdown_grace_seconds < 0:
            raise SettingsError("debug_step_delay, watchdog_seconds and shutdown_grace_seconds must be >= 0")

    @property
    def warmup_size_list(self) -> tuple[tuple[int, int], ...]:
        """warmup_sizes as ((width, height), ...), each a multiple of 16 within min_size..max_size."""
        sizes = []
        for item in filter(None, (part.strip() for part in self.warmup_sizes.split(","))):
            match = WARMUP_SIZE.fullmatch(item)
            width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
            if not all(side % 16 == 0 and self.min_size <= side <= self.max_size for side in (width, height)):
                raise SettingsError(f"setting warmup_sizes: {item!r} is not WIDTHxHEIGHT with multiples of 16 "
                                    f"from {self.min_size} to {self.max_size}, e.g. \"1024x1024,1024x768\"")
            sizes.append((width, height))
        return tuple(sizes)

    @property
    def job_slots(self) -> int:
        """Jobs the service runs at once: one in-process engine, or one per Ray replica (at the upper
        autoscaling bound; Serve holds a job for a replica that is still starting)."""
        return self.ray_max_replicas if self.serving == "ray" else 1


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype setting for a device: "auto" is bfloat16 on CUDA and float32 on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"setting {name}={value!r} is not one of: {', '.join(choices)}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file (ZIMAGE_CONFIG, which must exist, or configs/app.toml when present),
    then ZIMAGE_* overrides."""
    env = os.environ if env is None else env
    named = f"{ENV_PREFIX}CONFIG" in env
    config_path = Path(env[f"{ENV_PREFIX}CONFIG"]) if named else DEFAULT_CONFIG
    values: dict[str, Any] = {}
    document = _read_toml(config_path) if named or config_path.is_file() else {}
    for key, raw in document.items():
        values[key] = _parse_value(key, raw, f"{config_path}")
    for key in _field_types():
        env_name = f"{ENV_PREFIX}{key.upper()}"
        if env_name in env:
            values[key] = _parse_value(key, env[env_name], f"environment variable {env_name}")
    return Settings(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    """Flatten the TOML tables into one key -> value dict; unknown keys are errors, not silence."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist (set ZIMAGE_CONFIG to a TOML file)") from None
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"settings file {path} is not valid TOML: {err}") from None
    flat: dict[str, Any] = {}
    for section, table in document.items():
        items = table.items() if isinstance(table, dict) else [(section, table)]
        for key, value in items:
            if key not in _field_types():
                raise SettingsError(f"unknown setting {key!r} in {path}; known: {', '.join(_field_types())}")
            flat[key] = value
    return flat


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in fields(Settings)}


def _parse_value(key: str, raw: Any, source: str) -> Any:
    """Convert a TOML value or an environment string to the field's type, or explain why not."""
    kind = _field_types()[key]
    text = str(raw).strip()
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(raw, float) or isinstance(raw, bool):
                raise ValueError("expected a whole number")
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "Path":
            return Path(text).expanduser()
        return text
    except ValueError as err:
        raise SettingsError(f"setting {key}={raw!r} from {source} is invalid: {err}") from None


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of `settings` with some fields replaced (validated again)."""
    return dataclasses.replace(settings, **changes)
