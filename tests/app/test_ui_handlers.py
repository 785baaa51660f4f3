"""UI plumbing without a browser: size presets, recipe restore, history and its API export, language."""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from app.errors import ServiceError
from app.ui.export import GRADIO_PARAMETERS
from app.ui.slots import NO_LORA
from app.metadata import encode_png
from app.ui.presets import SIZE_CLASSES, preset_choices
from app.service import GenerationService
from app.ui.handlers import RESTORED_OUTPUTS, UiHandlers, form_params, lora_items
from app_helpers import gradio_form, make_settings
from fake_engine import FakeEngine
from model.request import GenerationRequest


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UiHandlers:
    # Files the tests drop stand for Gradio uploads: the handlers only open files in Gradio's upload folder.
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    settings = make_settings(tmp_path, max_size=2048)
    return UiHandlers(GenerationService(settings, FakeEngine))


def browser_request(language: str = "zh-CN,zh;q=0.9") -> SimpleNamespace:
    return SimpleNamespace(headers={"accept-language": language, "host": "127.0.0.1:7860"}, session_hash="s1")


def test_every_size_preset_is_a_valid_multiple_of_16_in_its_class():
    for size_class, sizes in SIZE_CLASSES.items():
        assert len(sizes) == 11 and sizes[0] == (int(size_class), int(size_class))
        for width, height in sizes:
            assert width % 16 == 0 and height % 16 == 0 and (height, width) in sizes
    assert preset_choices("1280", 2048)[5] == ("3:2 · 1536×1024", "1536x1024")
    assert preset_choices("1536", 1536) == [("1:1 · 1536×1536", "1536x1536")]


def test_size_class_and_preset_set_width_and_height(handlers: UiHandlers):
    update, width, height = handlers.size_class_changed("1536")
    assert (width, height) == (1536, 1536) and len(update["choices"]) == 11
    assert handlers.preset_changed("1280x720", 1024, 1024) == (1280, 720)
    assert handlers.preset_changed(None, 800, 600) == (800, 600)


def test_dropped_png_restores_its_recipe(handlers: UiHandlers, tmp_path: Path):
    recipe = {"prompt": "灯塔 lighthouse", "negative_prompt": "", "guidance": 1.0, "steps": 6, "seed": 99,
              "width": 1152, "height": 896, "strength": None, "shift": 2.5, "cfg_truncation": 0.9,
              "cfg_normalization": 0.0, "software": {"app": "0.1.0"}}
    path = tmp_path / "made-here.png"
    path.write_bytes(encode_png(Image.new("RGB", (8, 8)), recipe))
    values = handlers.restore_from_png(str(path), None, browser_request())
    restored = dict(zip(RESTORED_OUTPUTS, values))
    assert restored["prompt"] == "灯塔 lighthouse" and restored["seed"] == 99 and restored["steps"] == 6
    assert (restored["width"], restored["height"], restored["shift"]) == (1152, 896, 2.5)
    assert values[-2] == 1 and "99" in values[-1] and "已从图片" in values[-1]

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    values = handlers.restore_from_png(str(plain), "en", browser_request())
    assert "carries no Z-Image recipe" in values[-1]


def test_export_of_the_current_form(handlers: UiHandlers):
    python, *_ = handlers.export("form", None, None, browser_request(), *gradio_form(prompt="current prompt", seed=7))
    assert "seed=7," in python and "current prompt" in python and "http://127.0.0.1:7860/" in python


def test_language_follows_the_browser_and_tokens_wait_for_the_model(handlers: UiHandlers):
    assert handlers.detect_language(browser_request()) == ("zh", "zh")
    assert handlers.detect_language(browser_request("en-US,en;q=0.9")) == ("en", "en")
    assert "模型未加载" in handlers.count_tokens("一只猫", None, browser_request())
    assert handlers.toggle_negative(0.0)["interactive"] is False
    assert handlers.toggle_negative(1.5)["interactive"] is True


# A form with slot 1 = ink at 0.8, slot 2 empty, slot 3 = photo at -0.5.
MINIMAL_RECIPE = {"prompt": "p", "seed": 3, "steps": 8, "shift": 3.0, "guidance": 0.0, "width": 512, "height": 512,
                  "software": {"app": "0.1.0"}}
LORA_FORM = tuple(gradio_form(prompt="a cat", seed=7, lora_1="ink", lora_1_scale=0.8, lora_3="photo",
                              lora_3_scale=-0.5))


@pytest.fixture
def lora_dir(handlers: UiHandlers) -> Path:
    folder = handlers.settings.lora_dir
    folder.mkdir(parents=True)
    for name in ("ink", "photo"):
        (folder / f"{name}.safetensors").write_bytes(f"{name} weights".encode())
    return folder


def test_generate_parameters_are_the_exported_api():
    names = list(inspect.signature(UiHandlers.generate).parameters)
    assert names == ["self", *GRADIO_PARAMETERS, "lang", "request", "progress"]
    assert GRADIO_PARAMETERS[-6:] == ("lora_1", "lora_1_scale", "lora_2", "lora_2_scale", "lora_3", "lora_3_scale")


def test_lora_slots_become_the_request_lora_set():
    form = form_params(LORA_FORM)
    assert lora_items(form) == [{"name": "ink", "scale": 0.8}, {"name": "photo", "scale": -0.5}]
    assert lora_items({**form, "lora_1": None, "lora_3": NO_LORA}) == []  # empty slots are ignored
    assert lora_items({**form, "lora_3_scale": "0.25"})[1]["scale"] == 0.25  # raw API values are converted
    for bad, key in (("strong", "invalid_value"), (4.5, "out_of_range")):
        with pytest.raises(ServiceError) as caught:
            lora_items({**form, "lora_3_scale": bad})
        assert caught.value.key == key and caught.value.field == "lora_3_scale"


def test_export_carries_each_lora_with_its_own_scale(handlers: UiHandlers, lora_dir: Path):
    python, curl_gradio, curl_rest, openai_code = handlers.export("form", None, None, browser_request(), *LORA_FORM)
    assert "lora_1='ink',\n    lora_1_scale=0.8,\n    lora_2='photo',\n    lora_2_scale=-0.5," in python
    assert '"ink", 0.8, "photo", -0.5, "", 1.0]' in curl_gradio
    assert '"loras": [{"name": "ink", "scale": 0.8}, {"name": "photo", "scale": -0.5}]' in curl_rest
    assert "'loras': [{'name': 'ink', 'scale': 0.8}, {'name': 'photo', 'scale': -0.5}]" in openai_code
    assert "extra_body=extra_body" in openai_code


def test_dropped_png_restores_lora_slots_and_warns_about_missing_files(handlers: UiHandlers, lora_dir: Path,
                                                                       tmp_path: Path):
    ink_sha = hashlib.sha256(b"ink weights").hexdigest()
    loras = [{"name": "ink", "scale": 0.7, "file": "ink.safetensors", "sha256": ink_sha},
             {"name": "gone", "scale": 0.5, "file": "gone.safetensors", "sha256": "0" * 64},
             {"name": "photo", "scale": -1.25, "file": "photo.safetensors", "sha256": "f" * 64}]
    path = tmp_path / "with-loras.png"
    path.write_bytes(encode_png(Image.new("RGB", (8, 8)), {**MINIMAL_RECIPE, "loras": loras}))
    values = handlers.restore_from_png(str(path), "en", browser_request())
    restored = dict(zip(RESTORED_OUTPUTS, values))
    assert [restored[f"lora_{slot}"]["value"] for slot in (1, 2, 3)] == ["ink", "photo", NO_LORA]
    assert (restored["lora_1_scale"], restored["lora_2_scale"], restored["lora_3_scale"]) == (0.7, -1.25, 1.0)
    assert restored["lora_1"]["choices"][1:] == [("ink", "ink"), ("photo", "photo")]
    status = values[-1]
    assert "LoRA 'gone' used for this image is not in the LoRA folder" in status
    assert "LoRA 'photo' in the folder is not the file this image was made with" in status
    assert "'ink'" not in status  # same file as recorded: nothing to say

    for extra in ("film", "sketch"):
        (lora_dir / f"{extra}.safetensors").write_bytes(f"{extra} weights".encode())
    four = [{"name": name, "scale": 0.5, "sha256": hashlib.sha256(f"{name} weights".encode()).hexdigest()}
            for name in ("ink", "photo", "film", "sketch")]
    four[2]["scale"] = "strong"  # a hand-edited recipe: the slider gets its default instead of a crash
    path.write_bytes(encode_png(Image.new("RGB", (8, 8)), {**MINIMAL_RECIPE, "loras": four}))
    values = handlers.restore_from_png(str(path), "zh", browser_request())
    restored, status = dict(zip(RESTORED_OUTPUTS, values)), values[-1]
    assert [restored[f"lora_{slot}_scale"] for slot in (1, 2, 3)] == [0.5, 0.5, 1.0]
    assert "使用了 4 个 LoRA，但表单只有 3 个位置；未填入：'sketch'" in status


def test_reuse_last_takes_the_seed_of_the_last_run(handlers: UiHandlers):
    service = handlers.service
    service.start()
    try:
        deadline = time.monotonic() + 10
        while not service.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        job = service.submit(GenerationRequest(prompt="a fox", width=128, height=128, steps=1, seed=42,
                                               batch_size=2), door="test")
        assert job.wait(10)
        *_, last = handlers._final_outputs(job, "en")  # the gr.State the generate event leaves behind
    finally:
        service.shutdown(1.0)
    assert handlers.reuse_seed(last, -1) == 42
    assert handlers.reuse_seed(None, 7) == 7


def test_toggle_negative_follows_the_one_cfg_rule():
    assert UiHandlers.toggle_negative(0.0)["interactive"] is False
    assert UiHandlers.toggle_negative(0.5)["interactive"] is True
    assert UiHandlers.toggle_negative(None)["interactive"] is False
