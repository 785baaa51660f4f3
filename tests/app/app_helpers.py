"""Settings and constants shared by the app tests (a plain module: test files import it by name)."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings, load_settings, with_overrides

# Seconds slept after each step by the debug knob: makes queues and the Stop button observable.
STEP_DELAY = 0.1
TEST_QUEUE_SIZE = 6


def make_settings(tmp: Path, **changes) -> Settings:
    """configs/app.toml defaults with test folders and small limits (CPU, tiny model)."""
    base = load_settings({})
    values = dict(output_dir=tmp / "outputs", lora_dir=tmp / "loras", controlnet_dir=tmp / "controlnets", dtype="float32", device="cpu",
                  min_size=128, max_size=512, queue_size=TEST_QUEUE_SIZE, max_upload_bytes=2_000_000,
                  max_upload_pixels=1024 * 1024, shutdown_grace_seconds=2.0)
    values.update(changes)
    return with_overrides(base, **values)


def gradio_form(**values) -> list:
    """The /generate endpoint's positional inputs (GRADIO_PARAMETERS order): the doors' defaults, then `values`."""
    from app.ui.export import DEFAULTS, GRADIO_PARAMETERS

    unknown = set(values) - set(GRADIO_PARAMETERS)
    assert not unknown, f"not /generate parameters: {sorted(unknown)}"
    return [values[name] if name in values else DEFAULTS.get(name) for name in GRADIO_PARAMETERS]
