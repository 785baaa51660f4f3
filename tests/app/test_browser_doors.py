"""The new doors in Debian chromium: live previews, the history panel, and the language switch covering
Gradio's own strings (screenshots of both languages go to /tmp for a look)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, start_server
from test_browser import TIMEOUT_MS, browser, set_number  # noqa: F401  (browser: the module's fixture)

pytestmark = pytest.mark.browser
SCREENSHOTS = Path("/tmp/doors13-screenshots")


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The app on the fake engine, slowed to 0.35 s a step so previews (at most one per 0.3 s) show."""
    settings = make_settings(tmp_path_factory.mktemp("doors"))
    server = start_server(settings, lambda: FakeEngine(step_seconds=0.35))
    server.wait_ready()
    yield server
    server.stop()


def open_page(browser, server: LiveServer, locale: str) -> Page:  # noqa: F811
    page = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url + "/")
    return page


def small_job(page: Page, steps: int) -> None:
    page.locator("#prompt textarea").fill("a red fox in the snow")
    for elem_id, value in (("width", 128), ("height", 128), ("steps", steps)):
        set_number(page, elem_id, value)


def test_previews_change_before_the_final_image(browser, fake_server: LiveServer):  # noqa: F811
    page = open_page(browser, fake_server, "en-US")
    small_job(page, steps=8)
    page.locator("#gen-btn").click()
    previews: list[str] = []
    deadline = time.monotonic() + 60
    while "Done" not in page.locator("#status").inner_text():
        assert time.monotonic() < deadline, "the job did not finish"
        # The first image and the captions in one read: apart, the final image could land between the two.
        src, caption = page.locator("#gallery").evaluate(
            "g => [g.querySelector('img')?.getAttribute('src') ?? null, g.innerText]")
        if src and "preview" in caption and (not previews or previews[-1] != src):
            previews.append(src)
        time.sleep(0.05)
    assert len(previews) >= 2, previews  # at least one preview replaced by a newer one before the end
    assert all(src.endswith(".jpeg") for src in previews), [src for src in previews if not src.endswith(".jpeg")]
    expect(page.locator("#gallery")).to_contain_text("seed ")
    final = page.locator("#gallery img").first.get_attribute("src")
    assert final not in previews and final.endswith(".png")
    page.context.close()


def test_history_lists_the_output_folder_and_acts_on_the_chosen_image(browser, fake_server: LiveServer):  # noqa: F811
    page = open_page(browser, fake_server, "en-US")
    small_job(page, steps=1)
    set_number(page, "seed", 4321)
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#history")).to_contain_text("seed 4321")
    output_dir = str(fake_server.service.settings.output_dir.resolve())
    thumbnail = page.locator("#history img").first
    # Served from the output folder itself (a Gradio static path), not from a copy in Gradio's cache.
    assert output_dir in thumbnail.get_attribute("src")
    thumbnail.click()
    expect(page.locator("#history-recipe")).to_contain_text("4321")
    page.locator("#history-reference").click()
    expect(page.locator("#ref-img img")).to_be_visible()
    set_number(page, "seed", 1)
    page.locator("#history-restore").click()
    expect(page.locator("#seed input")).to_have_value("4321")
    before = len(list(fake_server.service.settings.output_dir.rglob("*.png")))
    page.locator("#history-delete").click()
    expect(page.locator("#status")).to_contain_text("deleted")
    assert len(list(fake_server.service.settings.output_dir.rglob("*.png"))) == before - 1
    expect(page.locator("#history")).not_to_contain_text("seed 4321")
    page.context.close()


GRADIO_STRINGS = {"en": ("Drop File Here", "Click to Upload", "Use via API", "Built with Gradio"),
                  "zh": ("将文件拖放到此处", "点击上传", "通过 API 使用", "使用 Gradio 构建")}
IMAGE_ZONE = {"en": "Drop Image Here", "zh": "将图像拖放到此处"}


def slowly(route) -> None:
    time.sleep(1.5)
    route.continue_()


@pytest.mark.parametrize("browser_locale, target", [("zh-CN", "en"), ("en-US", "zh")])
def test_the_language_switch_covers_gradios_own_strings(browser, fake_server: LiveServer, browser_locale: str,
                                                        target: str, tmp_path: Path):  # noqa: F811
    page = open_page(browser, fake_server, browser_locale)
    # Gradio loads a non-English translation table lazily, on the first switch to it: slowed down here, so the
    # switch must wait for it (it once lost that race on a quiet machine, leaving an English upload zone).
    page.route("**/assets/zh-*.js", slowly)
    start = "zh" if browser_locale.startswith("zh") else "en"
    for text in (*GRADIO_STRINGS[start], IMAGE_ZONE[start]):
        expect(page.get_by_text(text).first).to_be_visible()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{start}-at-load-{browser_locale}.png"), full_page=True)
    uploaded = target == "zh"  # one case switches with a reference image in place, which must stay
    if uploaded:
        reference = tmp_path / "reference.png"
        Image.new("RGB", (64, 64), (200, 30, 30)).save(reference)
        page.locator("#ref-img input[type=file]").set_input_files(str(reference))
        expect(page.locator("#ref-img img")).to_be_visible()
    page.locator("#lang-switch").get_by_text("English" if target == "en" else "中文").click()
    for text in GRADIO_STRINGS[target] + (() if uploaded else (IMAGE_ZONE[target],)):
        expect(page.get_by_text(text).first).to_be_visible()
    for text in (*GRADIO_STRINGS[start], IMAGE_ZONE[start]):
        expect(page.get_by_text(text)).to_have_count(0)
    if uploaded:
        expect(page.locator("#ref-img img")).to_be_visible()  # the remounted zone keeps the uploaded image
    expect(page.locator("#seed-random")).to_have_text("Random seed" if target == "en" else "随机种子")
    expect(page.locator("#history-info")).to_contain_text("Page 1/" if target == "en" else "第 1/")
    # An error toast: its message in the chosen language (its title is Gradio's name of the toast type).
    page.locator("#prompt textarea").fill("   ")
    page.locator("#gen-btn").click()
    expected = "The prompt is empty" if target == "en" else "提示词为空"
    expect(page.get_by_test_id("toast-body")).to_contain_text(expected)
    page.screenshot(path=str(SCREENSHOTS / f"{target}-switched-from-{browser_locale}.png"), full_page=True)
    page.context.close()
