"""The sampler and seed-variety fields at every door: form, REST, validation, recipe text, export, restore."""

from __future__ import annotations

import pytest

from app.api import parse_body, to_generation_request
from app.errors import ServiceError
from app.fields import FIELD_BY_NAME, RESTORED_FIELDS
from app.metadata import build_recipe, parameters_text, parse_parameters_text
from app.settings import Settings
from app.ui.export import snippets_for
from app.ui.samplers import sampler_choices, sampler_cost_note
from app.validation import check_request
from model.request import GenerationRequest
from model.sampling.catalog import SAMPLERS, SamplerInfo


def test_rest_body_carries_sampler_and_seed_variety_to_the_engine_request():
    body = parse_body({"prompt": "a cat", "sampler": "res_multistep", "seed_variety": 0.75})
    request = to_generation_request(body, Settings())
    assert (request.sampler, request.seed_variety) == ("res_multistep", 0.75)
    default = to_generation_request(parse_body({"prompt": "a cat"}), Settings())
    assert (default.sampler, default.seed_variety) == ("euler", 0.0)


@pytest.mark.parametrize("door, name", [("rest", "sampler"), ("gradio", "sampler")])
def test_an_unknown_sampler_is_refused_at_the_door_naming_the_field_and_the_choices(door, name):
    request = GenerationRequest(prompt="a cat", sampler="heun")
    with pytest.raises(ServiceError) as caught:
        check_request(request, Settings(), door)
    assert caught.value.field == name
    message = caught.value.message("en")
    assert all(sampler in message for sampler in SAMPLERS) and "euler is the default" in message


@pytest.mark.parametrize("value", [-0.1, 10.5])
def test_seed_variety_range_is_the_engines_one(value):
    with pytest.raises(ServiceError) as caught:
        check_request(GenerationRequest(prompt="a cat", seed_variety=value), Settings(), "rest")
    assert caught.value.field == "seed_variety" and "0.0 and 10.0" in caught.value.message("en")


def test_a1111_text_names_the_sampler_and_seed_variety_and_reads_them_back():
    request = GenerationRequest(prompt="a cat", sampler="euler_ancestral", seed_variety=0.5)
    recipe = build_recipe(request, 3, 0, {}, [], None, {})
    text = parameters_text(recipe)
    assert "Sampler: Euler ancestral," in text and "Seed variety: 0.5" in text
    parsed = parse_parameters_text(text)
    assert (parsed["sampler"], parsed["seed_variety"]) == ("euler_ancestral", 0.5)
    plain = parameters_text(build_recipe(GenerationRequest(prompt="a cat"), 3, 0, {}, [], None, {}))
    assert "Sampler: Euler," in plain and "Seed variety" not in plain


def test_export_carries_sampler_and_seed_variety_to_every_snippet():
    request = GenerationRequest(prompt="a cat", sampler="dpmpp_2m", seed_variety=1.25)
    snippets = snippets_for(build_recipe(request, 3, 0, {}, [], None, {}), "http://127.0.0.1:7860")
    assert "sampler='dpmpp_2m'," in snippets.python and "seed_variety=1.25," in snippets.python
    assert '"sampler": "dpmpp_2m"' in snippets.curl_rest and '"seed_variety": 1.25' in snippets.curl_rest
    assert "'sampler': 'dpmpp_2m'" in snippets.openai and '"dpmpp_2m", 1.25' in snippets.curl_gradio
    assert {"sampler", "seed_variety"} <= set(RESTORED_FIELDS)


def test_the_dropdown_says_what_samplers_cost_from_the_catalogue():
    assert all(info.calls_per_step == 1 for info in SAMPLERS.values())  # today: every sampler 1 call per step
    assert sampler_choices() == [(info.label, name) for name, info in SAMPLERS.items()]
    assert "Every sampler costs 1 transformer call per step" in sampler_cost_note("en")
    costly = {**SAMPLERS, "heun": SamplerInfo("heun", "Heun", 2, False, "second-order, two calls")}
    assert ("Heun (×2)", "heun") in sampler_choices(costly)
    assert "Heun ×2" in sampler_cost_note("en", costly) and "Heun ×2" in sampler_cost_note("zh", costly)
    assert FIELD_BY_NAME["sampler"].choices == tuple(SAMPLERS)


def test_the_form_sends_and_a_dropped_png_restores_sampler_and_seed_variety(tmp_path, monkeypatch):
    from PIL import Image

    from app.metadata import encode_png
    from app.service import GenerationService
    from app.ui.handlers import RESTORED_OUTPUTS, UiHandlers, form_params
    from app_helpers import gradio_form, make_settings
    from fake_engine import FakeEngine
    from test_ui_handlers import browser_request

    handlers = UiHandlers(GenerationService(make_settings(tmp_path), FakeEngine))
    form = form_params(gradio_form(prompt="a cat", sampler="euler_stochastic", seed_variety="0.5"))
    request = handlers._build_request(form)
    assert (request.sampler, request.seed_variety) == ("euler_stochastic", 0.5)
    assert handlers._build_request({**form, "sampler": None}).sampler == "euler"  # left out: the default

    recipe = build_recipe(GenerationRequest(prompt="a cat", sampler="res_multistep", seed_variety=2.0), 5, 0,
                          {}, [], None, {})
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the dropped PNG is an upload (app.uploads)
    path = tmp_path / "made-here.png"
    path.write_bytes(encode_png(Image.new("RGB", (8, 8)), recipe))
    restored = dict(zip(RESTORED_OUTPUTS, handlers.restore_from_png(str(path), "en", browser_request())))
    assert (restored["sampler"], restored["seed_variety"]) == ("res_multistep", 2.0)
