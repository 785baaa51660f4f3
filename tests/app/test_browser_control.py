"""Issue 12's page doors in Debian chromium, on the tiny real engine: paint a mask on the reference and inpaint;
upload a control image, see its canny map, and generate with a tiny ControlNet. Each served image is compared
with the engine's own image for the same inputs (the mask as the page made it)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from app.metadata import read_recipe
from app.ui.choices import CONTROL_MODE_LABELS
from live_server import LiveServer
from model.control.preprocess import canny
from model.request import GenerationRequest
from test_browser import TIMEOUT_MS, browser, newest_png, set_number  # noqa: F401  (browser: the module's fixture)

pytestmark = pytest.mark.browser
SIZE = 128


def open_page(browser, server: LiveServer) -> Page:  # noqa: F811
    page = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1200}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url + "/")
    return page


def small_job(page: Page, prompt: str, seed: int) -> None:
    page.locator("#prompt textarea").fill(prompt)
    for elem_id, value in (("width", SIZE), ("height", SIZE), ("steps", 2)):
        set_number(page, elem_id, value)
    page.locator("#seed input").fill(str(seed))
    page.locator("#seed input").press("Enter")


def shown_image(page: Page, server: LiveServer, elem_id: str) -> Image.Image:
    """The image a component shows, fetched from the server as the page does."""
    src = page.locator(f"#{elem_id} img").first.get_attribute("src")
    url = src if src.startswith("http") else server.url + src
    return Image.open(io.BytesIO(httpx.get(url, timeout=30).content))


def paint_stroke(page: Page, elem_id: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag the mouse across the editor's canvas between two points given as fractions of its size."""
    canvas = page.locator(f"#{elem_id} canvas").first
    canvas.scroll_into_view_if_needed()  # mouse events land only on what is in the viewport
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    page.mouse.down()
    for step in range(1, 11):
        t = step / 10
        page.mouse.move(box["x"] + box["width"] * (start[0] + (end[0] - start[0]) * t),
                        box["y"] + box["height"] * (start[1] + (end[1] - start[1]) * t))
    page.mouse.up()


def test_paint_a_mask_on_the_reference_and_inpaint(browser, tiny_server: LiveServer, direct_engine,  # noqa: F811
                                                  tmp_path: Path):
    page = open_page(browser, tiny_server)
    small_job(page, "a red door", seed=21)
    reference = Image.new("RGB", (SIZE, SIZE), (30, 90, 200))
    reference.paste((240, 200, 40), (0, 0, SIZE // 2, SIZE))
    reference.save(tmp_path / "reference.png")
    page.locator("#ref-img input[type=file]").set_input_files(str(tmp_path / "reference.png"))
    page.locator("#inpaint").get_by_text("Inpaint", exact=False).first.click()
    paint_stroke(page, "mask-editor", (0.3, 0.5), (0.7, 0.5))
    set_number(page, "strength", 1)
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    served = newest_png(tiny_server)

    # The mask the run used (shown under the editor): the stroke's band across the middle, white = repaint.
    expect(page.locator("#mask img")).to_be_visible()
    mask = shown_image(page, tiny_server, "mask").convert("L")
    painted = np.asarray(mask) == 255
    assert mask.size == (SIZE, SIZE) and set(np.unique(np.asarray(mask))) == {0, 255}
    rows, columns = np.nonzero(painted.any(axis=1))[0], np.nonzero(painted.any(axis=0))[0]
    assert 0 < rows.min() and rows.max() < SIZE - 1 and rows.max() - rows.min() < SIZE // 2, (rows.min(), rows.max())
    assert columns.min() < SIZE // 2 < columns.max()  # across both halves of the reference
    with Image.open(served) as image:
        recipe = read_recipe(image)
        got = np.asarray(image.convert("RGB"))
    assert recipe["mask"]["used"] and (recipe["mask"]["width"], recipe["mask"]["height"]) == (SIZE, SIZE)
    expected = engine_image(direct_engine, GenerationRequest(
        prompt="a red door", width=SIZE, height=SIZE, steps=2, seed=21, strength=1.0, reference_image=reference,
        mask=mask))
    assert np.abs(got.astype(int) - expected).max() <= 1
    page.context.close()


def choose(page: Page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_control_image_with_canny_shows_its_map_and_steers_the_image(browser, tiny_server: LiveServer,  # noqa: F811
                                                                     tiny_model_dir: Path, direct_engine,
                                                                     tmp_path: Path):
    folder = tiny_server.service.settings.controlnet_dir
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_model_dir / "controlnet" / "tiny-controlnet-union-2.1.safetensors",
                folder / "tiny-2.1.safetensors")
    page = open_page(browser, tiny_server)  # after the copy: the dropdown lists the folder on page load
    small_job(page, "a white bar", seed=7)
    page.locator("#control").get_by_text("Control (ControlNet)").click()
    choose(page, "controlnet", "tiny-2.1")
    choose(page, "control-mode", CONTROL_MODE_LABELS["canny"])
    control = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    control.paste((255, 255, 255), (40, 20, 90, 110))
    control.save(tmp_path / "control.png")
    page.locator("#control-image input[type=file]").set_input_files(str(tmp_path / "control.png"))

    expect(page.locator("#control-preview img")).to_be_visible()  # the map the ControlNet will see
    assert np.array_equal(np.asarray(shown_image(page, tiny_server, "control-preview").convert("RGB")),
                          np.asarray(canny(control)))
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    with Image.open(newest_png(tiny_server)) as image:
        recipe = read_recipe(image)
        got = np.asarray(image.convert("RGB")).astype(int)
    assert (recipe["controlnet"], recipe["control_mode"], recipe["control_scale"]) == ("tiny-2.1", "canny", 0.75)
    request = GenerationRequest(prompt="a white bar", width=SIZE, height=SIZE, steps=2, seed=7, control_image=control,
                                controlnet=str(folder / "tiny-2.1.safetensors"), control_mode="canny")
    assert np.abs(got - engine_image(direct_engine, request)).max() <= 1
    # The ControlNet made a difference: without it the same seed gives another image.
    plain = GenerationRequest(prompt="a white bar", width=SIZE, height=SIZE, steps=2, seed=7)
    assert np.abs(got - engine_image(direct_engine, plain)).mean() > 1
    page.context.close()


def engine_image(engine, request: GenerationRequest) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.asarray(engine.generate(request).images[0].convert("RGB")).astype(int)
