"""The UI in Debian chromium (acceptance 1, and the PNG recipe drop of acceptance 2)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from app.engine_loader import engine_factory
from app.ui.slots import NO_LORA_LABEL
from app.metadata import read_recipe
from app_helpers import make_settings
from live_server import LiveServer, start_server

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def set_number(page: Page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def newest_png(server: LiveServer) -> Path:
    return max(server.service.settings.output_dir.rglob("*.png"), key=lambda p: p.stat().st_mtime_ns)


def code_text(page: Page, elem_id: str) -> str:
    content = page.locator(f"#{elem_id} .cm-content")
    expect(content).to_contain_text("api_name", timeout=TIMEOUT_MS)
    # The code panel is CodeMirror: one .cm-line element per line (a short snippet is fully rendered).
    return "\n".join(content.locator(".cm-line").all_text_contents())


def choose_lora(page: Page, slot: int, name: str, strength: float) -> None:
    page.locator(f"#lora-{slot} input").click()
    page.get_by_role("option", name=name, exact=True).click()
    set_number(page, f"lora-{slot}-scale", strength)


def test_chinese_prompt_english_switch_reference_stop_and_export(browser, tiny_server: LiveServer, tiny_loras,
                                                                 tmp_path: Path):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(tiny_server.url + "/")

    # 1. A Chinese prompt in a zh-CN browser: Chinese labels, a live token count, an image with its seed.
    prompt = "一只橘猫举着写有“你好”的牌子"
    page.get_by_label("提示词", exact=True).fill(prompt)
    expect(page.locator("#token-count")).to_contain_text("/ 1024")
    negative = page.locator("#negative-prompt textarea")
    expect(negative).to_be_disabled()  # guidance 0: the negative prompt has no effect
    set_number(page, "guidance", 1)
    expect(negative).to_be_enabled()
    set_number(page, "guidance", 0)
    expect(negative).to_be_disabled()
    for elem_id, value in (("width", 128), ("height", 128), ("steps", 2)):
        set_number(page, elem_id, value)
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("完成")
    seed = re.search(r"种子：(\d+)", page.locator("#status").inner_text()).group(1)
    expect(page.locator("#gallery img").first).to_be_visible()
    expect(page.locator("#gallery")).to_contain_text(f"seed {seed}")
    first_png = newest_png(tiny_server)

    # 2. The explicit language switch beats the browser locale.
    page.locator("#lang-switch").get_by_text("English").click()
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.locator("#gen-btn")).to_have_text("Generate")

    # 3. A reference image by upload; the recipe records its use.
    reference = tmp_path / "reference.png"
    Image.new("RGB", (200, 120), (20, 120, 220)).save(reference)
    page.locator("#ref-img input[type=file]").set_input_files(str(reference))
    expect(page.locator("#ref-img img")).to_be_visible()
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("Done")
    with Image.open(newest_png(tiny_server)) as image:
        assert read_recipe(image)["reference_image"]["used"] is True

    # 4. Stop during a slow job: our queue's job is cancelled, the status says so.
    cancelled_before = tiny_server.metric('zimage_jobs_total{outcome="cancelled"}')
    set_number(page, "steps", 50)
    page.locator("#gen-btn").click()
    expect(page.locator("#status")).to_contain_text("Generating: step")
    page.locator("#stop-btn").click()
    expect(page.locator("#status")).to_contain_text("Generation stopped.")
    tiny_server.wait_until(
        lambda: tiny_server.metric('zimage_jobs_total{outcome="cancelled"}') == cancelled_before + 1, 60)
    assert tiny_server.metric("zimage_jobs_running") == 0

    # 5. A LoRA in slot 2 with its own strength; export the API call for the current form and run the
    #    Python snippet against the live server.
    set_number(page, "steps", 2)
    set_number(page, "seed", 77)
    page.locator("#loras").get_by_text("LoRA", exact=True).first.click()
    choose_lora(page, 2, "ink", 0.5)
    page.locator("#export").get_by_text("Export API code").click()
    page.locator("#export-btn").click()
    snippet = code_text(page, "code-python")
    assert "seed=77," in snippet and "handle_file('reference.png')" in snippet
    assert "lora_1='ink'," in snippet and "lora_1_scale=0.5," in snippet
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    image_path = run.stdout.strip().splitlines()[-1].split(" ")[0]
    with Image.open(image_path) as image:
        recipe = read_recipe(image)
        assert image.format == "PNG" and recipe["seed"] == 77
    assert [(lora["name"], lora["scale"]) for lora in recipe["loras"]] == [("ink", 0.5)]

    # 6. Dropping a PNG restores its recipe into the form.
    page.get_by_label("Prompt", exact=True).fill("something else")
    set_number(page, "seed", 5)
    page.locator("#recipe-drop input[type=file]").set_input_files(str(first_png))
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
    expect(page.locator("#seed input")).to_have_value(seed)
    expect(page.locator("#steps input[type=number]")).to_have_value("2")
    expect(page.locator("#lora-2 input")).to_have_value(NO_LORA_LABEL)  # that image was made without LoRAs
    context.close()


def test_missing_weights_banner(browser, tmp_path: Path):
    settings = make_settings(tmp_path, weights_dir=tmp_path / "nothing-here")
    server = start_server(settings, engine_factory(settings))
    try:
        server.wait_ready()
        page = browser.new_page(locale="en-US")
        page.goto(server.url + "/")
        banner = page.locator("#weights-banner")
        expect(banner).to_contain_text("scripts/download_weights.py", timeout=TIMEOUT_MS)
        expect(banner).to_contain_text("未找到模型权重")
        expect(banner).to_contain_text("Looked in: nothing-here")  # named, never by its absolute path
        expect(banner).not_to_contain_text(str(tmp_path))
        page.get_by_label("Prompt", exact=True).fill("a cat")
        page.locator("#gen-btn").click()
        expect(page.get_by_test_id("toast-body")).to_contain_text("Model weights not found", timeout=TIMEOUT_MS)
        page.close()
    finally:
        server.stop()
