"""The field table (app.fields) drives every door, and the doors' limits sit inside the engine's."""

from __future__ import annotations

import dataclasses

import pytest

from app.api import ImagesRequest
from app.errors import ServiceError
from app.fields import (DOOR_DEFAULTS, FIELDS, FORM_FIELDS, NUMERIC_FIELDS, RANDOM_SEED, RESTORED_FIELDS,
                        door_limits, field_range)
from app.metadata import build_recipe
from app.settings import Settings
from app.ui.export import GRADIO_PARAMETERS, normalize, openai_extras
from app.validation import check_request
from model.errors import InvalidRequestError
from model.request import ENGINE_LIMITS, RANGED_FIELDS, GenerationRequest


def test_every_field_is_a_request_field_and_a_gradio_parameter_in_table_order():
    request_fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert {f.name for f in FIELDS} <= request_fields
    assert GRADIO_PARAMETERS[:len(FORM_FIELDS)] == FORM_FIELDS
    own_ranges = {f.name for f in NUMERIC_FIELDS if f.value_range is not None}  # control_scale
    assert {f.name for f in NUMERIC_FIELDS} == set(RANGED_FIELDS) | {"width", "height"} | own_ranges


def test_rest_model_has_every_field_under_its_rest_name_with_the_engines_default():
    body = ImagesRequest(prompt="x")
    for field in FIELDS:
        if field.rest and field.name != "prompt" and field.kind is not object:
            assert getattr(body, field.rest) == DOOR_DEFAULTS[field.name], field.name
    assert body.n == GenerationRequest.batch_size and body.guidance_scale == GenerationRequest.guidance


def test_recipe_records_and_restore_reads_every_field():
    request = GenerationRequest(prompt="p", negative_prompt="n", guidance=1.5, steps=3, seed=9, width=128,
                                height=256, batch_size=2, strength=0.4, shift=2.5, cfg_truncation=0.5,
                                cfg_normalization=1.0, sampler="dpmpp_2m", seed_variety=0.5)
    recipe = build_recipe(request, 10, 1, {}, [], {"used": True}, {})
    for field in FIELDS:
        if field.kind is not object:
            # Without a ControlNet its settings are not recorded (app.control.control_recipe).
            expected = 10 if field.name == "seed" else None if field.with_controlnet_only else getattr(request, field.name)
            assert recipe[field.name] == expected, field.name
    assert build_recipe(request, 10, 1, {}, [], None, {})["strength"] is None  # no reference, no strength
    images = {field.name for field in FIELDS if field.kind is object}
    assert set(RESTORED_FIELDS) == set(FORM_FIELDS) - {"batch_size"} - images


def test_snippets_carry_every_rest_field():
    values = normalize({"prompt": "p", "reference_image": True, "controlnet": "net"})
    extras = openai_extras(values)
    for field in FIELDS:
        # The images travel as files next to the snippet (app.ui.export.IMAGE_FILES), not in extra_body.
        if field.rest and field.kind is not object and field.name not in ("prompt", "batch_size"):
            expected = "net" if field.name == "controlnet" else DOOR_DEFAULTS[field.name]
            assert extras[field.rest] == expected, field.name
    assert "strength" not in openai_extras(normalize({"prompt": "p"}))


def test_door_limits_are_the_engines_narrowed_by_the_settings():
    settings = Settings(max_batch=2, max_steps=20)
    limits = door_limits(settings)
    assert limits.batch_size == (1, 2) and limits.steps == (1, 20)
    for name in RANGED_FIELDS:
        low, high = field_range(name, settings)
        engine_low, engine_high = ENGINE_LIMITS.range(name)
        assert (low == RANDOM_SEED if name == "seed" else low == engine_low) and high <= engine_high, name
    with pytest.raises(ValueError, match="engine's limit"):
        ENGINE_LIMITS.narrowed(steps=51)


@pytest.mark.parametrize("name", RANGED_FIELDS)
def test_app_and_engine_agree_at_every_bound(name: str):
    """A value the app accepts the engine accepts too, and one step past the engine's bound both refuse."""
    from model.engine import validate_request  # torch loads here, not while collecting

    settings = Settings()
    base = GenerationRequest(prompt="a cat", width=256, height=256)
    low, high = field_range(name, settings)
    for value in (max(low, ENGINE_LIMITS.range(name)[0]), high):
        request = dataclasses.replace(base, **{name: value})
        check_request(request, settings)
        validate_request(request, 16, (1536, 512, 512))
    engine_low, engine_high = ENGINE_LIMITS.range(name)
    step = 1 if isinstance(engine_high, int) else 0.005
    outside = [engine_high + step] + ([] if name == "seed" else [engine_low - step])  # the app maps -1 to random
    for value in outside:
        request = dataclasses.replace(base, **{name: value})
        with pytest.raises(ServiceError):
            check_request(request, settings)
        with pytest.raises(InvalidRequestError) as caught:
            validate_request(request, 16, (1536, 512, 512))
        assert caught.value.field == name
