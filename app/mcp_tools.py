"""The MCP door (setting `mcp_server`, off by default): Gradio serves the `generate_image` tool at
/gradio_api/mcp/ (streamable HTTP; SSE at /gradio_api/mcp/sse), mounted in our FastAPI app on our port.

The tool submits to the same service queue as every other door (same checks, limits and errors) and
answers with the PNG; MCP clients receive it as an image. Only this tool is listed: the page's events are
kept out of the MCP tool list (they are UI plumbing, not tools).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.errors import ServiceError
from app.fields import DOOR_DEFAULTS, RANDOM_SEED, field_range
from app.jobs import JobState
from app.service import GenerationService
from app.settings import Settings
from model.request import GenerationRequest

TOOL_API_NAME = "generate_image"
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
    """Add the generate_image endpoint to `demo` and keep every other endpoint out of the MCP tool list."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None:
            hide_from_mcp(block_fn.fn)
    settings = service.settings
    generate_image = _tool_function(service)
    with demo:
        inputs = [
            gr.Textbox(visible=False),
            gr.Textbox(value=DOOR_DEFAULTS["negative_prompt"], visible=False),
            gr.Number(value=DOOR_DEFAULTS["width"], precision=0, visible=False),
            gr.Number(value=DOOR_DEFAULTS["height"], precision=0, visible=False),
            gr.Number(value=DOOR_DEFAULTS["steps"], precision=0, visible=False),
            gr.Number(value=RANDOM_SEED, precision=0, visible=False),
            gr.Number(value=DOOR_DEFAULTS["guidance"], visible=False),
        ]
        output = gr.Image(type="filepath", format="png", visible=False)
        trigger = gr.Button(visible=False)
        # concurrency_limit=None: Gradio hands the call straight to our queue, like the page's generate.
        trigger.click(generate_image, inputs=inputs, outputs=output, api_name=TOOL_API_NAME,
                      api_description=tool_description(settings), concurrency_limit=None)


def tool_description(settings: Settings) -> str:
    """The tool's description with this server's limits (what an agent reads before calling it)."""
    width, height, steps = (field_range(name, settings) for name in ("width", "height", "steps"))
    return (
        "Generate one image from a text prompt with Z-Image-Turbo, a 6B text-to-image model that "
        "follows English and Chinese prompts and renders text in images well. Describe the subject, "
        "style, lighting and any text to draw in the prompt. The image is returned inline, with the URL of "
        f"the PNG that carries its generation recipe. width and height: multiples of 16 from {width[0]} to {width[1]} (default 1024); "
        f"steps: {steps[0]}-{steps[1]} (the model is distilled for 8); seed: -1 for a random one, or a "
        "number to reproduce an image; guidance: 0 (the Turbo default) or above 0 to use the negative "
        "prompt. Jobs share one queue with the server's other users: a full queue is refused with a "
        "message to retry later."
    )


def _tool_function(service: GenerationService):
    def generate_image(prompt: str, negative_prompt: str, width: float, height: float, steps: float,
                       seed: float, guidance: float) -> str:
        """Generate an image with Z-Image-Turbo.

        Args:
            prompt: What the image shows (English or Chinese); text to render goes in quotes.
            negative_prompt: What to avoid; used only when guidance is above 0.
            width: Image width in pixels, a multiple of 16.
            height: Image height in pixels, a multiple of 16.
            steps: Denoising steps; 8 is the model's default.
            seed: -1 for a random seed, or a seed to reproduce an earlier image.
            guidance: Classifier-free guidance scale; 0 (default) turns it off.
        """
        try:
            request = GenerationRequest(
                prompt=str(prompt or ""), negative_prompt=str(negative_prompt or ""),
                width=_whole(width, "width"), height=_whole(height, "height"), steps=_whole(steps, "steps"),
                seed=_whole(seed, "seed"), guidance=float(guidance or 0.0))
            job = service.submit(request, door="mcp")
        except ServiceError as err:
            service.metrics.error(err.key)
            raise gr.Error(err.message("en"), print_exception=False) from None
        try:
            job.wait()
        finally:
            if not job.done:  # the MCP call was abandoned: free the queue slot
                service.cancel(job)
        if job.state != JobState.SUCCEEDED:
            raise gr.Error(job.error.message("en") if job.error else "generation failed", print_exception=False)
        image = job.result.images[0]
        if image.path is None:
            raise gr.Error("the image could not be saved on the server (see its log)", print_exception=False)
        return str(image.path)

    return generate_image


def _whole(value: Any, field: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ServiceError("invalid_value", field=field, detail=f"expected a number, got {value!r}") from None
    if number != int(number):
        raise ServiceError("invalid_value", field=field, detail=f"expected a whole number, got {value!r}")
    return int(number)
