"""The dropdown choices of the table's choice fields: (label, value) pairs, labels in both languages where the
value alone does not say enough (a dropdown's choices are not relabelled by the language switch)."""

from __future__ import annotations

from pathlib import Path

from app.control import list_controlnet_names
from app.fields import RequestField
from app.ui.samplers import sampler_choices
from app.ui.slots import NO_LORA, slot_choices

NO_CONTROLNET = NO_LORA  # the ControlNet dropdown's empty choice ("none"), as a LoRA slot's

# Modes that need a model (depth, pose) are not offered as preprocessors: "map" takes such a map as uploaded.
CONTROL_MODE_LABELS = {
    "map": "map — 原样使用上传的控制图 / use the uploaded map as it is (depth, pose, tile…)",
    "canny": "canny — 边缘 / edges",
    "gray": "gray — 灰度 / grayscale",
    "scribble": "scribble — 涂鸦线条 / bold strokes",
    "lineart": "lineart — 线稿 / line drawing",
}


def choice_options(field: RequestField) -> list[tuple[str, str]]:
    """(label, value) choices of `field`: samplers say what each costs, control modes what they do."""
    if field.name == "sampler":
        return sampler_choices()
    if field.name == "control_mode":
        return [(CONTROL_MODE_LABELS[mode], mode) for mode in field.choices]
    return [(value, value) for value in field.choices]


def controlnet_choices(controlnet_dir: Path) -> list[tuple[str, str]]:
    """The ControlNet dropdown: none, then the folder's files by name (read again on every page load)."""
    return slot_choices(list_controlnet_names(controlnet_dir))
