"""The Inpaint and Control accordions without a browser: the mask made of the editor's strokes, the control
map preview, the ControlNet dropdown, and a dropped PNG's ControlNet settings restored into the form."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app.metadata import build_recipe, encode_png
from app.service import GenerationService
from app.ui.choices import NO_CONTROLNET
from app.ui.control_panel import ControlPanel
from app.ui.handlers import RESTORED_OUTPUTS, UiHandlers, form_params
from app.ui.mask_editor import editor_value, painted_mask
from app_helpers import gradio_form, make_settings
from fake_engine import FakeEngine
from model.control.preprocess import PREPROCESSORS
from model.request import GenerationRequest

EN = SimpleNamespace(headers={"accept-language": "en"}, session_hash="s1")


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UiHandlers:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))  # files written there stand for uploads
    (tmp_path / "uploads").mkdir()
    settings = make_settings(tmp_path)
    settings.controlnet_dir.mkdir(parents=True)
    (settings.controlnet_dir / "union-2.1.safetensors").write_bytes(b"a ControlNet file")
    return UiHandlers(GenerationService(settings, FakeEngine))


def upload(tmp_path: Path, name: str, image: Image.Image) -> str:
    path = tmp_path / "uploads" / name
    image.save(path)
    return str(path)


def stroke_layer(size: tuple[int, int], box: tuple[int, int, int, int], alpha: int = 160) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 20, 147, alpha), box)
    return layer


def test_the_mask_is_white_where_any_layer_is_painted():
    layers = [stroke_layer((64, 32), (4, 4, 20, 12)), stroke_layer((64, 32), (40, 20, 50, 30), alpha=1)]
    mask = np.asarray(painted_mask(layers, (64, 32)))
    assert mask.shape == (32, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[4:12, 4:20].all() and mask[20:30, 40:50].all()  # even a faint stroke repaints
    assert mask.sum() == 255 * (16 * 8 + 10 * 10)
    assert painted_mask([Image.new("RGBA", (64, 32))], (64, 32)) is None  # nothing painted: no inpainting
    assert painted_mask([], (64, 32)) is None


def test_a_scaled_canvas_maps_back_onto_the_reference():
    mask = np.asarray(painted_mask([stroke_layer((32, 16), (0, 0, 16, 16))], (64, 32)))  # the left half
    assert mask.shape == (32, 64) and mask[:, :32].all() and not mask[:, 32:].any()


def test_the_editor_shows_the_reference_and_reads_its_strokes(tmp_path: Path):
    assert editor_value(None) is None
    assert editor_value("/up/ref.png") == {"background": "/up/ref.png", "layers": [], "composite": "/up/ref.png"}
    background = Image.new("RGB", (64, 48))
    mask = ControlPanel.mask_of({"background": background, "layers": [stroke_layer((64, 48), (0, 0, 8, 8))],
                                 "composite": background})
    assert mask.size == (64, 48) and mask.getpixel((2, 2)) == 255 and mask.getpixel((40, 40)) == 0
    assert ControlPanel.mask_of({"background": None, "layers": [stroke_layer((64, 48), (0, 0, 8, 8))]}) is None
    assert ControlPanel.mask_of(None) is None


@pytest.mark.parametrize("mode", sorted(PREPROCESSORS))
def test_the_preview_is_the_preprocessors_map(handlers: UiHandlers, tmp_path: Path, mode: str):
    image = Image.new("RGB", (80, 60), (10, 10, 10))
    image.paste((240, 240, 240), (20, 10, 60, 50))
    panel = ControlPanel(handlers.settings)
    preview = panel.preview(upload(tmp_path, "control.png", image), mode, "en", EN)
    assert np.array_equal(np.asarray(preview), np.asarray(PREPROCESSORS[mode](image)))
    assert panel.preview(None, mode, "en", EN) is None


def test_the_preview_refuses_server_paths_with_a_warning(handlers: UiHandlers, monkeypatch: pytest.MonkeyPatch):
    warnings: list[str] = []
    monkeypatch.setattr("app.ui.control_panel.gr.Warning", warnings.append)
    assert ControlPanel(handlers.settings).preview("/etc/passwd", "canny", "en", EN) is None
    assert warnings and "control_image must be a file uploaded to this server" in warnings[0]


def test_the_form_sends_mask_and_control_fields_with_the_net_by_name(handlers: UiHandlers, tmp_path: Path):
    reference = upload(tmp_path, "reference.png", Image.new("RGB", (64, 64), (200, 0, 0)))
    mask_image = Image.new("L", (64, 64), 0)
    mask_image.paste(255, (0, 0, 32, 64))
    form = form_params(gradio_form(prompt="a gate", reference_image={"path": reference},
                                   mask={"path": upload(tmp_path, "mask.png", mask_image)},
                                   controlnet="union-2.1", control_mode="canny", control_scale="0.9",
                                   control_image={"path": upload(tmp_path, "control.png", Image.new("RGB", (96, 64)))}))
    request = handlers._build_request(form)
    assert request.controlnet == str((handlers.settings.controlnet_dir / "union-2.1.safetensors").resolve())
    assert (request.control_mode, request.control_scale, request.control_image.size) == ("canny", 0.9, (96, 64))
    assert np.array_equal(np.asarray(request.mask.convert("L")), np.asarray(mask_image))
    plain = handlers._build_request(form_params(gradio_form(prompt="a gate", controlnet=NO_CONTROLNET)))
    assert (plain.controlnet, plain.mask, plain.control_image) == (None, None, None)


def restore(handlers: UiHandlers, tmp_path: Path, recipe: dict) -> tuple[dict, str]:
    path = upload(tmp_path, "made-here.png", Image.new("RGB", (8, 8)))
    Path(path).write_bytes(encode_png(Image.new("RGB", (8, 8)), recipe))
    values = handlers.restore_from_png(path, "en", EN)
    return dict(zip(RESTORED_OUTPUTS, values)), values[-1]


def test_a_dropped_png_restores_its_controlnet_settings(handlers: UiHandlers, tmp_path: Path):
    request = GenerationRequest(prompt="a gate", controlnet="/srv/nets/union-2.1.safetensors",
                                control_image=Image.new("RGB", (32, 32)), control_mode="lineart", control_scale=0.9)
    restored, status = restore(handlers, tmp_path, build_recipe(request, 5, 0, {}, [], None, {}))
    assert restored["controlnet"]["value"] == "union-2.1" and ("union-2.1", "union-2.1") in restored["controlnet"][
        "choices"]
    assert (restored["control_mode"], restored["control_scale"]) == ("lineart", 0.9)
    assert "⚠️" not in status

    without = build_recipe(GenerationRequest(prompt="plain"), 5, 0, {}, [], None, {})
    restored, _ = restore(handlers, tmp_path, without)
    assert restored["controlnet"]["value"] == NO_CONTROLNET  # an image made without one clears the choice


def test_a_recipe_naming_a_missing_controlnet_warns_and_chooses_none(handlers: UiHandlers, tmp_path: Path):
    request = GenerationRequest(prompt="a gate", controlnet="/srv/nets/gone.safetensors",
                                control_image=Image.new("RGB", (32, 32)))
    restored, status = restore(handlers, tmp_path, build_recipe(request, 5, 0, {}, [], None, {}))
    assert restored["controlnet"]["value"] == NO_CONTROLNET
    assert "ControlNet 'gone' used for this image is not in the ControlNet folder (controlnets)" in status
    assert str(tmp_path) not in status  # the folder is named, never by its absolute path
