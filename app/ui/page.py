"""The Gradio 6 page: form, results, history, API export; every generate goes to the shared service.

Concurrency decision: the generate event has `concurrency_limit=None`, so Gradio hands every job
straight to OUR queue (app.service), which orders UI, Gradio-API and REST jobs together, reports
positions and refuses overflow. Were Gradio to hold jobs in its own queue (limit 1), UI jobs would wait
there unseen by REST and our positions would be wrong. `queue(api_open=False)` closes
`/gradio_api/run/...`, so nothing reaches the engine except through the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.fields import FIELD_BY_NAME, field_range, fields_in
from app.loras import SCALE_RANGE, list_lora_names
from app.service import GenerationService
from app.settings import Settings
from app.ui.control_panel import ControlPanel, build_control, build_inpaint, wire_control
from app.ui.export import GRADIO_PARAMETERS
from app.ui.handlers import EXPORT_SOURCES, RESTORED_OUTPUTS, UiHandlers
from app.ui.history_panel import HistoryPanel
from app.ui.locale import SET_GRADIO_LOCALE_JS
from app.ui.presets import DEFAULT_CLASS, SIZE_CLASSES, preset_choices
from app.ui.slots import DEFAULT_SCALE, NO_LORA, SLOTS, name_field, scale_field, slot_choices
from app.ui.widgets import Labels, labelled, slider, table_input


# The generate event's inputs, in the order of UiHandlers.generate's parameters (= the public API).
FORM_INPUTS = GRADIO_PARAMETERS


def build_demo(service: GenerationService, translations: gr.I18n) -> gr.Blocks:
    """The page, wired to `service`. Elements carry elem_ids for tests."""
    handlers = UiHandlers(service)
    panel = HistoryPanel(service.history)
    control = ControlPanel(service.settings)
    labels = Labels(translations)
    with gr.Blocks(title="Z-Image-Turbo", delete_cache=(3600, 3600)) as demo:
        ui = _build_layout(labels, service.settings)
        _wire_generation(handlers, panel, control, ui)
        wire_control(control, ui, demo)
        _wire_form(handlers, ui)
        _wire_export(handlers, ui)
        _wire_history(handlers, panel, ui, demo)
        _wire_page(handlers, panel, ui, labels, demo)
    return demo


def _build_layout(L: Labels, settings: Settings) -> dict[str, Any]:
    """Every component by name: states, header, form, buttons, results, history, export panel."""
    t = L.t
    ui: dict[str, Any] = {"lang": gr.State(None), "last_result": gr.State(None), "history_page": gr.State(0),
                          "history_ids": gr.State([]), "history_chosen": gr.State(None)}
    with gr.Row():
        L(gr.Markdown(t("heading"), elem_id="heading"), value="heading")
        ui["lang_radio"] = gr.Radio([("中文", "zh"), ("English", "en")], value=None, label="语言 / Language",
                                    elem_id="lang-switch", scale=0, min_width=200)
    ui["banner"] = gr.Markdown(visible=False, elem_id="weights-banner")
    ui["banner_timer"] = gr.Timer(2.0, active=True)
    with gr.Row():
        with gr.Column(scale=5):
            ui.update(_build_form(L, settings))
            ui.update(_build_lora_slots(L, settings.lora_dir))
            with gr.Row():
                ui["generate"] = L(gr.Button(t("generate"), variant="primary", elem_id="gen-btn"), value="generate")
                ui["stop"] = L(gr.Button(t("stop"), variant="stop", elem_id="stop-btn"), value="stop")
            ui["recipe_drop"] = L(gr.File(label=t("recipe_drop"), file_types=[".png"], type="filepath",
                                          elem_id="recipe-drop", height=150), label="recipe_drop")
        with gr.Column(scale=5):
            ui["status"] = gr.Markdown(elem_id="status")
            # format: how in-memory images are sent, i.e. the live JPEG previews; the results are PNG files
            # from the output folder, served as they are.
            ui["gallery"] = L(gr.Gallery(label=t("gallery"), format="jpeg", columns=2, height=520,
                                         elem_id="gallery", buttons=["download", "fullscreen"]), label="gallery")
            ui["details"] = L(gr.JSON(label=t("details"), elem_id="details", open=False), label="details")
            ui.update(_build_history(L))
            ui.update(_build_export(L))
    return ui


def _build_history(L: Labels) -> dict[str, Any]:
    """The output folder's images, newest first, paged; the chosen one's recipe and what to do with it."""
    t = L.t
    h: dict[str, Any] = {}
    h["history_gallery"] = L(gr.Gallery(label=t("history"), format="png", columns=6, height=220, elem_id="history",
                                        allow_preview=False), label="history")
    with gr.Row(equal_height=True):
        h["history_newer"] = L(gr.Button(t("history_newer"), size="sm", elem_id="history-newer"), value="history_newer")
        h["history_info"] = gr.Markdown(elem_id="history-info")
        h["history_older"] = L(gr.Button(t("history_older"), size="sm", elem_id="history-older"), value="history_older")
        h["history_refresh"] = L(gr.Button(t("history_refresh"), size="sm", elem_id="history-refresh"),
                                 value="history_refresh")
    with gr.Row():
        h["history_restore"] = L(gr.Button(t("history_restore"), size="sm", elem_id="history-restore"),
                                 value="history_restore")
        h["history_reference"] = L(gr.Button(t("history_reference"), size="sm", elem_id="history-reference"),
                                   value="history_reference")
        h["history_delete"] = L(gr.Button(t("history_delete"), size="sm", variant="stop", elem_id="history-delete"),
                                value="history_delete")
    h["history_recipe"] = L(gr.JSON(label=t("history_recipe"), elem_id="history-recipe", open=False),
                            label="history_recipe")
    return h


def _wire_history(handlers: UiHandlers, panel: HistoryPanel, ui: dict[str, Any], demo: gr.Blocks) -> None:
    """Listing and paging, choosing an image, and the actions on the chosen one."""
    private = {"api_visibility": "private", "concurrency_limit": None}
    listing = [ui["history_gallery"], ui["history_ids"], ui["history_page"], ui["history_info"]]
    demo.load(panel.show, inputs=[ui["history_page"], ui["lang"]], outputs=listing, **private)
    ui["history_refresh"].click(panel.show, inputs=[ui["history_page"], ui["lang"]], outputs=listing, **private)
    ui["history_newer"].click(panel.newer, inputs=[ui["history_page"], ui["lang"]], outputs=listing, **private)
    ui["history_older"].click(panel.older, inputs=[ui["history_page"], ui["lang"]], outputs=listing, **private)
    ui["history_gallery"].select(panel.select, inputs=[ui["history_ids"]],
                                 outputs=[ui["history_chosen"], ui["history_recipe"], ui["export_source"]], **private)

    def restore_chosen(item_id: str | None, lang: str | None, request: gr.Request) -> list:
        return handlers.restore_from_png(panel.chosen_path(item_id), lang, request)

    restore_outputs = [ui[name] for name in RESTORED_OUTPUTS] + [ui["batch_size"], ui["status"]]
    ui["history_restore"].click(restore_chosen, inputs=[ui["history_chosen"], ui["lang"]], outputs=restore_outputs,
                                **private)
    ui["history_reference"].click(panel.as_reference, inputs=[ui["history_chosen"]], outputs=[ui["reference_image"]],
                                  **private)
    ui["history_delete"].click(panel.delete, inputs=[ui["history_chosen"], ui["history_page"], ui["lang"]],
                               outputs=[*listing, ui["history_chosen"], ui["history_recipe"], ui["status"]],
                               **private)


def _wire_generation(handlers: UiHandlers, panel: HistoryPanel, control: ControlPanel, ui: dict[str, Any]) -> None:
    """Generate (the public /generate API, after the mask is read from the editor's latest strokes), history
    after success, and Stop."""
    # Not on the editor's change event: Gradio 6.31's editor swallows its first change (the first stroke on a
    # background set by the server would be lost), and a click right after a stroke could overtake the event.
    refresh_mask = ui["generate"].click(control.mask_of, inputs=[ui["mask_editor"]], outputs=[ui["mask"]],
                                        api_visibility="private", queue=False, show_progress="hidden")
    generate_event = refresh_mask.then(
        handlers.generate, inputs=[*(ui[name] for name in FORM_INPUTS), ui["lang"]],
        outputs=[ui["status"], ui["gallery"], ui["details"], ui["last_result"]],
        api_name="generate", concurrency_limit=None, show_progress="minimal",
        # Raw values reach the handler, which checks them itself: so a bad upload gets our bilingual
        # message instead of Gradio's preprocessing traceback.
        preprocess=False,
    )
    # The new images lead the history's first page (every other tab sees them on its next listing).
    generate_event.success(lambda lang: panel.show(0, lang), inputs=[ui["lang"]],
                           outputs=[ui["history_gallery"], ui["history_ids"], ui["history_page"], ui["history_info"]],
                           api_visibility="private")
    # Stop cancels OUR job; the generate generator then ends on its own and reports the stop as its
    # last output. `cancels=[generate_event]` is deliberately not used: killing the stream races with
    # the progress updates already in flight, and the status could stay at "step 5/50".
    ui["stop"].click(handlers.stop, api_visibility="private", queue=False)


def _wire_export(handlers: UiHandlers, ui: dict[str, Any]) -> None:
    inputs = [ui["export_source"], ui["history_chosen"], ui["lang"], *(ui[name] for name in FORM_INPUTS)]
    for trigger in (ui["export_button"].click, ui["export_source"].change):
        trigger(handlers.export, inputs=inputs, outputs=ui["codes"], api_visibility="private",
                concurrency_limit=None)


def _wire_page(handlers: UiHandlers, panel: HistoryPanel, ui: dict[str, Any], labels: Labels,
               demo: gr.Blocks) -> None:
    """Language (browser first, then the switch), the weights banner, and the LoRA lists on page load."""
    private = {"api_visibility": "private", "queue": False}
    # Gradio's own strings follow its frontend locale, which the script sets (awaited before the event that
    # shows the upload zones again). The zones read the locale only when they mount, so they are hidden
    # first: a file dropped meanwhile waits for the new zone instead of landing in the old one.
    uploads = [ui["reference_image"], ui["control_image"], ui["recipe_drop"]]
    ui["lang_radio"].input(lambda lang: lang, inputs=[ui["lang_radio"]], outputs=[ui["lang"]], **private).then(
        lambda: [gr.update(visible=False)] * len(uploads), outputs=uploads, **private).then(
        lambda _: [gr.update(visible=True)] * len(uploads), inputs=[ui["lang_radio"]], outputs=uploads,
        js=SET_GRADIO_LOCALE_JS, **private).then(
        labels.relabel, inputs=[ui["lang_radio"]], outputs=labels.components, **private).then(
        panel.show, inputs=[ui["history_page"], ui["lang"]],
        outputs=[ui["history_gallery"], ui["history_ids"], ui["history_page"], ui["history_info"]], **private)
    ui["banner_timer"].tick(handlers.banner, outputs=[ui["banner"], ui["banner_timer"]], **private)
    demo.load(handlers.detect_language, outputs=[ui["lang"], ui["lang_radio"]], **private)
    demo.load(handlers.banner, outputs=[ui["banner"], ui["banner_timer"]], **private)
    demo.load(handlers.lora_choices, outputs=[ui[name_field(slot)] for slot in SLOTS], **private)


def _build_form(L: Labels, settings: Settings) -> dict[str, Any]:
    """Prompt, guidance/steps/seed, size presets, batch, reference image, advanced: name -> component.

    The main fields are placed here; every field of the "advanced" section is a slider (a dropdown for a
    choice field) in the Advanced accordion, in table order, so a new field appears there without touching
    this function."""
    t = L.t
    f: dict[str, Any] = {}
    f["prompt"] = L(gr.Textbox(label=t("prompt"), placeholder=t("prompt_placeholder"), lines=3, elem_id="prompt"),
                    label="prompt", placeholder="prompt_placeholder")
    f["tokens"] = gr.Markdown(elem_id="token-count")
    negative = FIELD_BY_NAME["negative_prompt"]
    f["negative_prompt"] = L(gr.Textbox(negative.default, label=t(negative.label_key), info=t(negative.info),
                                        lines=1, interactive=False, elem_id=negative.dom_id),
                             **labelled(negative))
    with gr.Row():
        f["guidance"] = slider(L, "guidance", settings)
        f["steps"] = slider(L, "steps", settings)
    with gr.Row(equal_height=True):
        seed = FIELD_BY_NAME["seed"]
        low, high = field_range("seed", settings)
        f["seed"] = L(gr.Number(value=seed.default, precision=0, minimum=low, maximum=high, label=t(seed.label_key),
                                info=t(seed.info), elem_id=seed.dom_id), **labelled(seed))
        f["seed_random"] = L(gr.Button(t("seed_random"), size="sm", elem_id="seed-random"), value="seed_random")
        f["seed_reuse"] = L(gr.Button(t("seed_reuse"), size="sm", elem_id="seed-reuse"), value="seed_reuse")
    with gr.Row():
        f["size_class"] = L(gr.Radio(list(SIZE_CLASSES), value=DEFAULT_CLASS, label=t("size_class"),
                                     elem_id="size-class"), label="size_class")
        presets = preset_choices(DEFAULT_CLASS, settings.max_size)
        f["preset"] = L(gr.Dropdown(presets, value=presets[0][1] if presets else None, label=t("aspect"),
                                    elem_id="size-preset"), label="aspect")
    with gr.Row():
        f["width"] = slider(L, "width", settings)
        f["height"] = slider(L, "height", settings)
    f["batch_size"] = slider(L, "batch_size", settings)
    with gr.Row():
        reference = FIELD_BY_NAME["reference_image"]
        f["reference_image"] = L(gr.Image(type="filepath", sources=["upload", "clipboard"],
                                          label=t(reference.label_key), elem_id=reference.dom_id, height=220),
                                 **labelled(reference))
        f["strength"] = slider(L, "strength", settings)
    f.update(build_inpaint(L))
    f.update(build_control(L, settings))
    with L(gr.Accordion(t("advanced"), open=False, elem_id="advanced"), label="advanced"):
        for field in fields_in("advanced"):
            f[field.name] = table_input(L, field, settings)
    return f


def _build_lora_slots(L: Labels, lora_dir: Path) -> dict[str, Any]:
    """MAX_UI_LORAS slots, each a LoRA name from ZIMAGE_LORA_DIR (or none) and its own strength."""
    t = L.t
    slots: dict[str, Any] = {}
    choices = slot_choices(list_lora_names(lora_dir))
    with L(gr.Accordion(t("loras"), open=False, elem_id="loras"), label="loras"):
        L(gr.Markdown(t("loras_info"), elem_id="loras-info"), value="loras_info")
        for slot in SLOTS:
            name, scale = name_field(slot), scale_field(slot)
            with gr.Row(equal_height=True):
                slots[name] = L(gr.Dropdown(choices, value=NO_LORA, label=t(name), elem_id=f"lora-{slot}",
                                            scale=3), label=name)
                slots[scale] = L(gr.Slider(*SCALE_RANGE, value=DEFAULT_SCALE, step=0.05, label=t(scale),
                                           elem_id=f"lora-{slot}-scale", scale=2), label=scale)
    return slots


def _build_export(L: Labels) -> dict[str, Any]:
    t = L.t
    with L(gr.Accordion(t("export"), open=False, elem_id="export"), label="export"):
        with gr.Row():
            source = L(gr.Dropdown(EXPORT_SOURCES, value=EXPORT_SOURCES[0][1], label=t("export_source"),
                                   elem_id="export-source"), label="export_source")
            button = L(gr.Button(t("export_button"), elem_id="export-btn"), value="export_button")
        codes = [
            L(gr.Code(language="python", label=t("code_python"), elem_id="code-python", interactive=False),
              label="code_python"),
            L(gr.Code(language="shell", label=t("code_curl_gradio"), elem_id="code-curl-gradio", interactive=False),
              label="code_curl_gradio"),
            L(gr.Code(language="shell", label=t("code_curl_rest"), elem_id="code-curl-rest", interactive=False),
              label="code_curl_rest"),
            L(gr.Code(language="python", label=t("code_openai"), elem_id="code-openai", interactive=False),
              label="code_openai"),
        ]
    return {"export_source": source, "export_button": button, "codes": codes}


def _wire_form(handlers: UiHandlers, f: dict[str, Any]) -> None:
    """Token counter, negative-prompt toggle, seed buttons, size presets, recipe drop."""
    private = {"api_visibility": "private", "queue": False}
    f["prompt"].change(handlers.count_tokens, inputs=[f["prompt"], f["lang"]], outputs=[f["tokens"]],
                       trigger_mode="always_last", show_progress="hidden", **private)
    f["guidance"].change(handlers.toggle_negative, inputs=[f["guidance"]], outputs=[f["negative_prompt"]], **private)
    f["seed_random"].click(lambda: -1, outputs=[f["seed"]], **private)
    f["seed_reuse"].click(handlers.reuse_seed, inputs=[f["last_result"], f["seed"]], outputs=[f["seed"]], **private)
    f["size_class"].input(handlers.size_class_changed, inputs=[f["size_class"]],
                          outputs=[f["preset"], f["width"], f["height"]], **private)
    f["preset"].input(handlers.preset_changed, inputs=[f["preset"], f["width"], f["height"]],
                      outputs=[f["width"], f["height"]], **private)
    restore_outputs = [f[name] for name in RESTORED_OUTPUTS] + [f["batch_size"], f["status"]]
    f["recipe_drop"].upload(handlers.restore_from_png, inputs=[f["recipe_drop"], f["lang"]], outputs=restore_outputs,
                            **private)
