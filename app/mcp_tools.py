"""The MCP door (setting `mcp_server`, off by default): Gradio serves the tools `generate_image`, `edit_image`
(inpainting / image-to-image) and `generate_with_control` (ControlNet) at /gradio_api/mcp/ (streamable HTTP;
SSE at /gradio_api/mcp/sse), mounted in our FastAPI app on our port.

Each tool submits to the same service queue as every other door (app.mcp_functions) and answers with the PNG;
MCP clients receive it as an image. Only these tools are listed: the page's events are kept out of the MCP tool
list (they are UI plumbing, not tools).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.fields import DOOR_DEFAULTS, RANDOM_SEED, field_range
from app.mcp_functions import AUTO_STRENGTH, control_function, edit_function, generate_function
from app.service import GenerationService
from app.settings import Settings

# What hide_from_mcp marks a function as: neither "tool", "resource" nor "prompt", so gradio.mcp lists it as none.
NOT_A_TOOL = "ui"


def hide_from_mcp(fn: Any) -> None:
    """Keep the endpoint of `fn` out of the MCP tool list while it stays in the Gradio API.

    Gradio 6.31 has no public switch for this: `api_visibility` hides an endpoint from the MCP list only by
    also hiding it from the API docs ("undocumented") or from gradio_client ("private"), and the page's
    /generate is a documented door. gradio.mcp skips a function whose `_mcp_type` (the attribute its own
    @gr.mcp.resource / @gr.mcp.prompt decorators set) is not "tool"; this is the one place that relies on it,
    and tests/app/test_mcp.py fails if Gradio stops honouring it.
    """
    function = getattr(fn, "__func__", fn)  # a bound method's attribute lives on its function
    function._mcp_type = NOT_A_TOOL


def add_mcp_tools(demo: gr.Blocks, service: GenerationService) -> None:
    """Add the tools' endpoints to `demo` and keep every other endpoint out of the MCP tool list."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None:
            hide_from_mcp(block_fn.fn)
    settings = service.settings
    with demo:
        tools = {
            "generate_image": (generate_function(service), [
                _text(), _text(DOOR_DEFAULTS["negative_prompt"]), *_size_steps_seed(),
                _number(DOOR_DEFAULTS["guidance"])]),
            "edit_image": (edit_function(service), [_text(), _text(), _text(), _number(AUTO_STRENGTH),
                                                    *_size_steps_seed()]),
            "generate_with_control": (control_function(service), [
                _text(), _text(), _text(), _text(DOOR_DEFAULTS["control_mode"]),
                _number(DOOR_DEFAULTS["control_scale"]), *_size_steps_seed()]),
        }
        for name, (function, inputs) in tools.items():
            output = gr.Image(type="filepath", format="png", visible=False)
            # concurrency_limit=None: Gradio hands the call straight to our queue, like the page's generate.
            gr.Button(visible=False).click(function, inputs=inputs, outputs=output, api_name=name,
                                           api_description=tool_description(name, settings), concurrency_limit=None)


# Hidden components only carry a tool's arguments; their values are the defaults an agent may leave out.
def _text(value: str = "") -> gr.Textbox:
    return gr.Textbox(value=value, visible=False)


def _number(value: float, precision: int | None = None) -> gr.Number:
    return gr.Number(value=value, precision=precision, visible=False)


def _size_steps_seed() -> list[gr.Number]:
    return [_number(DOOR_DEFAULTS[name], precision=0) for name in ("width", "height", "steps")] + [
        _number(RANDOM_SEED, precision=0)]


def tool_description(name: str, settings: Settings) -> str:
    """A tool's description with this server's limits (what an agent reads before calling it)."""
    width, height, steps = (field_range(field, settings) for field in ("width", "height", "steps"))
    limits = (f"width and height: multiples of 16 from {width[0]} to {width[1]} (default 1024); steps: "
              f"{steps[0]}-{steps[1]} (the model is distilled for 8); seed: -1 for a random one, or a number to "
              "reproduce an image. The image is returned inline, with the URL of the PNG that carries its "
              "generation recipe. Jobs share one queue with the server's other users: a full queue is refused "
              "with a message to retry later.")
    what = {
        "generate_image": "Generate one image from a text prompt with Z-Image-Turbo, a 6B text-to-image model that "
                          "follows English and Chinese prompts and renders text in images well. Describe the "
                          "subject, style, lighting and any text to draw in the prompt. guidance: 0 (the Turbo "
                          "default) or above 0 to use the negative prompt.",
        "edit_image": "Edit an existing image with Z-Image-Turbo. With a mask (white = repaint, the size of the "
                      "image) only the masked area is painted anew from the prompt and the rest is kept "
                      "(inpainting); without one the whole image is varied, as much as strength says "
                      "(image-to-image). Images are base64 text.",
        "generate_with_control": "Generate an image whose composition follows a control image, with a ControlNet "
                                 "Union file of this server: its edges (canny), lines (lineart, scribble), a "
                                 "grayscale version (gray), or a depth / pose / tile map made elsewhere (map). "
                                 "The control image is base64 text.",
    }[name]
    return f"{what} {limits}"
