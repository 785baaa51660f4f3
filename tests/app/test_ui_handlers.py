"""UI plumbing without a browser: size presets, recipe restore, history and its API export, language."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from app.metadata import encode_png
from app.presets import SIZE_CLASSES, preset_choices
from app.service import GenerationService
from app.ui_handlers import RESTORED_FIELDS, UiHandlers
from app_helpers import make_settings
from fake_engine import FakeEngine


@pytest.fixture
def handlers(tmp_path: Path) -> UiHandlers:
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
    restored = dict(zip(RESTORED_FIELDS, values))
    assert restored["prompt"] == "灯塔 lighthouse" and restored["seed"] == 99 and restored["steps"] == 6
    assert (restored["width"], restored["height"], restored["shift"]) == (1152, 896, 2.5)
    assert values[-2] == 1 and "99" in values[-1] and "已从图片" in values[-1]

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    values = handlers.restore_from_png(str(plain), "en", browser_request())
    assert "carries no Z-Image recipe" in values[-1]


def test_history_entries_export_their_own_recipe(handlers: UiHandlers):
    entry = {"recipe": {"prompt": "old one", "seed": 4242, "steps": 8, "width": 1024, "height": 1024,
                        "batch_size": 2}, "images": [("a.png", "seed 4242"), ("b.png", "seed 4243")], "seeds": [4242]}
    history, items, choices = handlers.remember(entry, [])
    assert history == [entry] and items[1] == ("b.png", "#1 · seed 4243") and len(choices["choices"]) == 2
    form = ("current prompt", "", 0.0, 8, 7, 1024, 1024, 1, None, 0.6, 3.0, 1.0, 0.0, [], 1.0)
    python, curl_gradio, curl_rest, openai_code = handlers.export(0, history, None, browser_request(), *form)
    assert "seed=4242," in python and "old one" in python and "batch_size=2," in python
    assert "http://127.0.0.1:7860/" in python and '"seed": 4242' in curl_rest
    python, *_ = handlers.export(-1, history, None, browser_request(), *form)
    assert "seed=7," in python and "current prompt" in python


def test_language_follows_the_browser_and_tokens_wait_for_the_model(handlers: UiHandlers):
    assert handlers.detect_language(browser_request()) == ("zh", "zh")
    assert handlers.detect_language(browser_request("en-US,en;q=0.9")) == ("en", "en")
    assert "模型未加载" in handlers.count_tokens("一只猫", None, browser_request())
    assert handlers.toggle_negative(0.0)["interactive"] is False
    assert handlers.toggle_negative(1.5)["interactive"] is True
