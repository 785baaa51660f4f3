"""The one table of request fields: every door (form, Gradio API, REST, exported code, PNG recipe) reads it.

A plain numeric field is added here (plus its GenerationRequest attribute, its EngineLimits range and its
app.ui.strings label; a choice field names its choices instead of a range); the REST model, the form, the handler's API signature, the snippets, the recipe and
the restore-from-PNG mapping all follow from this table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from app.settings import Settings
from model.control.preprocess import CONTROL_MODES
from model.control.validation import MAX_CONTROL_SCALE
from model.request import ENGINE_LIMITS, EngineLimits, GenerationRequest
from model.sampling.catalog import SAMPLERS

RANDOM_SEED = -1  # a seed field left at this draws a new seed for each request
# Seeds the doors accept: the browser holds numbers as doubles, exact only up to 2**53; 32 bits stay
# readable and copyable (the engine itself takes 64-bit seeds, model.request.MAX_SEED).
DOOR_MAX_SEED = 2**32 - 1
# The engine's own defaults, read once; the seed is drawn per request by the doors instead.
_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}


@dataclass(frozen=True)
class RequestField:
    """One request field and its names and looks at each door."""

    name: str  # GenerationRequest attribute = Gradio API parameter = form key = recipe key
    kind: type  # int / float / str; object for an image (reference, mask, control image)
    rest: str | None  # REST / OpenAI body name; None: travels inside another field (width, height -> size)
    step: float | None = None  # slider step on the form (None: not a slider)
    # "main": placed by app.ui.page; "advanced": the Advanced accordion, in table order; "control" / "inpaint":
    # the Control and Inpaint accordions (app.ui.control_panel)
    section: str = "main"
    label: str = ""  # app.ui.strings key of the label (default: the name)
    info: str | None = None  # app.ui.strings key of the help line
    elem_id: str = ""  # DOM id on the page (default: the name with dashes)
    restore: bool = True  # a dropped PNG's recipe sets it back on the form
    with_reference_only: bool = False  # meaningful (recorded, exported) only when a reference image is used
    with_controlnet_only: bool = False  # meaningful (recorded, exported) only when a ControlNet is used
    form: bool = True  # an input of the Gradio form and its /generate API (False: the REST door only)
    value_range: tuple[float, float] | None = None  # a numeric range of its own (else EngineLimits')
    choices: tuple[str, ...] = ()  # a text field limited to these values (a dropdown on the form)

    @property
    def label_key(self) -> str:
        return self.label or self.name

    @property
    def dom_id(self) -> str:
        return self.elem_id or self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)

    @property
    def default(self) -> Any:
        """What a door shows or sends when the field is left out (the engine's default)."""
        return RANDOM_SEED if self.name == "seed" else _ENGINE_DEFAULTS[self.name]


# In Gradio API order (the public /generate parameters before the LoRA slots).
FIELDS: tuple[RequestField, ...] = (
    RequestField("prompt", str, rest="prompt"),
    RequestField("negative_prompt", str, rest="negative_prompt", info="negative_info"),
    RequestField("guidance", float, rest="guidance_scale", step=0.5, info="guidance_info"),
    RequestField("steps", int, rest="steps", step=1, info="steps_info"),
    RequestField("seed", int, rest="seed", info="seed_info"),
    RequestField("width", int, rest=None, step=16),
    RequestField("height", int, rest=None, step=16),
    RequestField("batch_size", int, rest="n", step=1, label="batch", elem_id="batch", restore=False),
    RequestField("reference_image", object, rest="image", label="reference", elem_id="ref-img", restore=False),
    RequestField("strength", float, rest="strength", step=0.01, info="strength_info", with_reference_only=True),
    RequestField("shift", float, rest="shift", step=0.1, section="advanced"),
    RequestField("cfg_truncation", float, rest="cfg_truncation", step=0.01, section="advanced"),
    RequestField("cfg_normalization", float, rest="cfg_normalization", step=0.05, section="advanced"),
    RequestField("sampler", str, rest="sampler", section="advanced", info="sampler_info", choices=tuple(SAMPLERS)),
    RequestField("seed_variety", float, rest="seed_variety", step=0.05, section="advanced",
                 info="seed_variety_info"),
    # Inpainting and ControlNet (app.control): the engine checks them (model.control.validation). The mask
    # (white = repaint) is drawn on the reference in the Inpaint accordion; the ControlNet is a file name in
    # settings.controlnet_dir, picked in the Control accordion (app.ui.control_panel places both).
    RequestField("mask", object, rest="mask", section="inpaint", restore=False, with_reference_only=True),
    RequestField("controlnet", str, rest="controlnet", section="control", info="controlnet_info"),
    RequestField("control_image", object, rest="control_image", section="control", restore=False,
                 with_controlnet_only=True),
    RequestField("control_mode", str, rest="control_mode", section="control", info="control_mode_info",
                 with_controlnet_only=True, choices=CONTROL_MODES),
    RequestField("control_scale", float, rest="control_scale", step=0.05, section="control",
                 info="control_scale_info", with_controlnet_only=True, value_range=(0.0, MAX_CONTROL_SCALE)),
)
FIELD_BY_NAME = {field.name: field for field in FIELDS}
FORM_FIELDS = tuple(field.name for field in FIELDS if field.form)
NUMERIC_FIELDS = tuple(field for field in FIELDS if field.numeric)
FORM_NUMERIC_FIELDS = tuple(field for field in NUMERIC_FIELDS if field.form)
FORM_TEXT_FIELDS = tuple(field for field in FIELDS if field.kind is str and field.form)
CHOICE_FIELDS = tuple(field for field in FIELDS if field.choices)
IMAGE_FIELDS = tuple(field for field in FIELDS if field.kind is object)
# Fields a dropped PNG's recipe restores on the form, in the order the restore handler returns them.
RESTORED_FIELDS = tuple(field.name for field in FIELDS if field.restore and field.form)
# Fields every door fills in when left out (the prompt is required; images have no default).
DOOR_FIELDS = tuple(field.name for field in FIELDS if field.name != "prompt" and field.kind is not object)
DOOR_DEFAULTS: dict[str, Any] = {name: FIELD_BY_NAME[name].default for name in DOOR_FIELDS}
SIZE_MULTIPLE = 16


def fields_in(section: str) -> tuple[RequestField, ...]:
    return tuple(field for field in FIELDS if field.section == section)


def door_limits(settings: Settings) -> EngineLimits:
    """The engine's limits narrowed by the settings' policy (settings never exceed the engine's)."""
    return ENGINE_LIMITS.narrowed(steps=settings.max_steps, batch_size=settings.max_batch, seed=DOOR_MAX_SEED)


def field_range(name: str, settings: Settings) -> tuple[float, float]:
    """(low, high) a door accepts for numeric field `name`; the seed also takes RANDOM_SEED."""
    if name in ("width", "height"):
        return settings.min_size, settings.max_size
    if FIELD_BY_NAME[name].value_range is not None:
        return FIELD_BY_NAME[name].value_range
    low, high = door_limits(settings).range(name)
    return (RANDOM_SEED, high) if name == "seed" else (low, high)


def door_name(name: str, door: str) -> str:
    """What the door calls field `name` (errors name the field as the client sent it)."""
    rest = FIELD_BY_NAME[name].rest if name in FIELD_BY_NAME else None
    return rest if door == "rest" and rest else name
