"""The Inpaint and Control accordions: the mask painted on the reference, and a ControlNet with its control
image, preprocessor (with a preview of the map it makes) and strength.

Their request fields are the table's "inpaint" and "control" sections (app.fields); every path a client
names goes through app.uploads like the reference image's.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from app.errors import ServiceError
from app.fields import FIELD_BY_NAME
from app.settings import Settings
from app.ui.choices import NO_CONTROLNET, controlnet_choices
from app.ui.handlers import request_language, uploaded_image
from app.ui.mask_editor import editor_value, painted_mask
from app.ui.widgets import Labels, labelled, table_input
from model.control.preprocess import preprocess

# Strokes in one strong colour, so the painted area is plain on any picture (its alpha is what counts).
MASK_BRUSH = gr.Brush(colors=["#ff1493"], default_color="#ff1493", color_mode="fixed")


def build_inpaint(L: Labels) -> dict[str, Any]:
    """The editor showing the reference (paint = repaint) and the mask it makes, the `mask` input."""
    t = L.t
    mask = FIELD_BY_NAME["mask"]
    with L(gr.Accordion(t("inpaint"), open=False, elem_id="inpaint"), label="inpaint"):
        L(gr.Markdown(t("inpaint_help"), elem_id="inpaint-help"), value="inpaint_help")
        with gr.Row():
            # No upload source, crop or resize: the background is always the reference image as it is, so the
            # painted layer lines up with it pixel for pixel.
            editor = L(gr.ImageEditor(type="pil", image_mode="RGBA", sources=[], transforms=[], layers=False,
                                      brush=MASK_BRUSH, format="png", label=t("mask_editor"), height=360,
                                      elem_id="mask-editor", scale=3), label="mask_editor")
            shown = L(gr.Image(type="filepath", format="png", interactive=False, label=t(mask.label_key),
                               elem_id=mask.dom_id, height=360, scale=2), **labelled(mask))
    return {"mask_editor": editor, "mask": shown}


def build_control(L: Labels, settings: Settings) -> dict[str, Any]:
    """ControlNet file, preprocessor, control image and its preview, strength."""
    t = L.t
    c: dict[str, Any] = {}
    net, image = FIELD_BY_NAME["controlnet"], FIELD_BY_NAME["control_image"]
    with L(gr.Accordion(t("control"), open=False, elem_id="control"), label="control"):
        L(gr.Markdown(t("control_help"), elem_id="control-help"), value="control_help")
        with gr.Row():
            c["controlnet"] = L(gr.Dropdown(controlnet_choices(settings.controlnet_dir), value=NO_CONTROLNET,
                                            label=t(net.label_key), info=t(net.info), elem_id=net.dom_id),
                                **labelled(net))
            c["control_mode"] = table_input(L, FIELD_BY_NAME["control_mode"], settings)
        with gr.Row():
            c["control_image"] = L(gr.Image(type="filepath", sources=["upload", "clipboard"], label=t(image.label_key),
                                            elem_id=image.dom_id, height=260), **labelled(image))
            c["control_preview"] = L(gr.Image(interactive=False, format="png", label=t("control_preview"),
                                              elem_id="control-preview", height=260), label="control_preview")
        c["control_scale"] = table_input(L, FIELD_BY_NAME["control_scale"], settings)
    return c


class ControlPanel:
    """The two accordions' events (form plumbing: private, never the public API)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def preview(self, path: str | None, mode: str, lang: str | None, request: gr.Request) -> Image.Image | None:
        """The control map the chosen preprocessor makes of the control image (None without an image)."""
        if not path:
            return None
        try:
            image = uploaded_image(path, "control_image", self.settings)
        except ServiceError as err:
            gr.Warning(err.message(request_language(lang, request)))
            return None
        return preprocess(mode, image)

    @staticmethod
    def mask_of(editor: dict[str, Any] | None) -> Image.Image | None:
        """What is painted on the editor, as the engine's mask at the reference's size (None: nothing painted)."""
        if not editor or editor.get("background") is None:
            return None
        return painted_mask(editor.get("layers") or [], editor["background"].size)

    def controlnet_choices(self) -> dict:
        """The ControlNet dropdown offers the folder as it is now (page load)."""
        return gr.update(choices=controlnet_choices(self.settings.controlnet_dir))


def wire_control(panel: ControlPanel, ui: dict[str, Any], demo: gr.Blocks) -> None:
    """Preview on a new control image or preprocessor; the editor follows the reference; the ControlNet list is
    read again on page load. (The mask is read from the editor when Generate is clicked: app.ui.page.)"""
    private = {"api_visibility": "private", "queue": False}
    for trigger in (ui["control_image"].change, ui["control_mode"].change):
        trigger(panel.preview, inputs=[ui["control_image"], ui["control_mode"], ui["lang"]],
                outputs=[ui["control_preview"]], show_progress="hidden", **private)
    # A new reference becomes the editor's background; the old strokes go with the old picture.
    ui["reference_image"].change(editor_value, inputs=[ui["reference_image"]], outputs=[ui["mask_editor"]],
                                 **private)
    demo.load(panel.controlnet_choices, outputs=[ui["controlnet"]], **private)
