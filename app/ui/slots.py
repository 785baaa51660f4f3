"""The form's fixed LoRA slots (a name dropdown and a strength slider each) <-> [{"name", "scale"}] lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from app.loras import SCALE_RANGE, list_lora_names, lora_path, lora_sha256
from app.redaction import public_path

MAX_UI_LORAS = 3
SLOTS = tuple(range(1, MAX_UI_LORAS + 1))
DEFAULT_SCALE = 1.0
NO_LORA = ""  # value of the empty choice: the slot is ignored
NO_LORA_LABEL = "— 无 / none —"


def name_field(slot: int) -> str:
    """Gradio API parameter (and form key) of a slot's LoRA name: lora_1, lora_2, ..."""
    return f"lora_{slot}"


def scale_field(slot: int) -> str:
    """Gradio API parameter (and form key) of a slot's strength: lora_1_scale, ..."""
    return f"lora_{slot}_scale"


# The slots' Gradio API parameters, in endpoint order, and their defaults (an empty slot).
SLOT_PARAMETERS = tuple(field for slot in SLOTS for field in (name_field(slot), scale_field(slot)))
SLOT_DEFAULTS: dict[str, Any] = {**{name_field(slot): NO_LORA for slot in SLOTS},
                                 **{scale_field(slot): DEFAULT_SCALE for slot in SLOTS}}


def slot_choices(names: Iterable[str]) -> list[tuple[str, str]]:
    """Dropdown choices of a slot: the empty "none" choice, then the LoRA names."""
    return [(NO_LORA_LABEL, NO_LORA)] + [(name, name) for name in names]


def filled_slots(form: Mapping[str, Any]) -> list[tuple[int, str, Any]]:
    """(slot, name, raw scale) of every slot with a LoRA chosen, in slot order; empty slots are skipped."""
    filled = []
    for slot in SLOTS:
        name = str(form.get(name_field(slot)) or NO_LORA).strip()
        if name != NO_LORA:
            scale = form.get(scale_field(slot))
            filled.append((slot, name, DEFAULT_SCALE if scale is None else scale))
    return filled


def slot_values(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """[{"name", "scale"}] -> the slot parameters (first MAX_UI_LORAS items; the rest stay empty)."""
    values = dict(SLOT_DEFAULTS)
    for slot, item in zip(SLOTS, items):
        values[name_field(slot)] = str(item["name"])
        scale = item.get("scale")
        values[scale_field(slot)] = DEFAULT_SCALE if scale is None else float(scale)
    return values


def usable_recipe_loras(items: Iterable[Mapping[str, Any]], lora_dir: Path
                        ) -> tuple[list[dict], list[tuple[str, dict[str, Any]]]]:
    """A recipe's LoRAs that the folder still has, plus (message key, params) notes about the others:
    missing files, files that changed since the image was made, and more LoRAs than the form has slots."""
    items = list(items)
    available = set(list_lora_names(lora_dir))
    kept: list[dict] = []
    notes: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        name = str(item.get("name", ""))
        if name not in available:
            notes.append(("recipe_lora_missing", {"name": name, "folder": public_path(lora_dir)}))
            continue
        recorded = item.get("sha256")
        if recorded and lora_sha256(lora_path(lora_dir, name)) != recorded:
            notes.append(("recipe_lora_changed", {"name": name, "sha256": str(recorded)[:12]}))
        kept.append({"name": name, "scale": _recipe_scale(item.get("scale"))})
    if len(kept) > MAX_UI_LORAS:
        left_out = ", ".join(repr(item["name"]) for item in kept[MAX_UI_LORAS:])
        notes.append(("recipe_too_many_loras", {"count": len(items), "slots": MAX_UI_LORAS, "names": left_out}))
    return kept[:MAX_UI_LORAS], notes


def _recipe_scale(value: Any) -> float:
    """A recorded strength that a slider can show; anything else (a hand-edited recipe) becomes the default."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        return DEFAULT_SCALE
    return scale if SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] else DEFAULT_SCALE
