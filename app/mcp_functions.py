"""What the MCP tools do (app.mcp_tools registers them): build the request from the agent's arguments, submit it
to the shared queue as every door does (same checks, limits and errors), wait, and answer with the PNG's path.

Images arrive as base64 text (PNG, JPEG, WebP; a data: URL too), decoded under the upload limits like the REST
door's: never as a URL or a path, so a tool call cannot make the server fetch or read anything.
Gradio turns each function's docstring into the tool's parameter descriptions, reading one line per parameter
(a wrapped line would be lost): hence the long lines there.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from app.control import resolve_controlnet
from app.edits import EDIT_STRENGTH
from app.errors import ServiceError
from app.fields import DOOR_DEFAULTS
from app.jobs import JobState
from app.service import GenerationService
from app.validation import decode_base64_image
from model.request import GenerationRequest

AUTO_STRENGTH = 0  # edit_image's strength left at this: EDIT_STRENGTH with a mask, the img2img default without


def run_tool_job(service: GenerationService, build: Callable[[], GenerationRequest]) -> str:
    """Queue the request `build` makes and wait for it; the first image's path, or a gr.Error the agent reads
    (in English: MCP clients send no language)."""
    try:
        job = service.submit(build(), door="mcp")
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


def generate_function(service: GenerationService):
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
        return run_tool_job(service, lambda: GenerationRequest(
            prompt=str(prompt or ""), negative_prompt=str(negative_prompt or ""), guidance=float(guidance or 0.0),
            **_size_steps_seed(width, height, steps, seed)))

    return generate_image


def edit_function(service: GenerationService):
    settings = service.settings

    def edit_image(prompt: str, image: str, mask: str, strength: float, width: float, height: float, steps: float,
                   seed: float) -> str:
        """Edit an image with Z-Image-Turbo: repaint the masked area (inpainting), or vary the whole image.

        Args:
            prompt: What the result shows (for inpainting: the whole picture, including what the masked area becomes).
            image: The picture to edit, as base64 (PNG, JPEG or WebP; a data: URL works too).
            mask: Optional base64 mask of the same size as the image: white = repaint, black = keep. Empty: the whole image is varied.
            strength: How much may change, 0.01 to 1; 0 = the default (1 with a mask: the area is painted anew; 0.6 without).
            width: Output width in pixels, a multiple of 16 (the image is cropped to its aspect ratio and scaled).
            height: Output height in pixels, a multiple of 16.
            steps: Denoising steps; 8 is the model's default.
            seed: -1 for a random seed, or a seed to reproduce an earlier result.
        """
        def build() -> GenerationRequest:
            if not image:
                raise ServiceError("missing_field", field="image")
            default = EDIT_STRENGTH if mask else DOOR_DEFAULTS["strength"]
            return GenerationRequest(
                prompt=str(prompt or ""), reference_image=decode_base64_image(str(image), settings, "image"),
                mask=decode_base64_image(str(mask), settings, "mask") if mask else None,
                strength=default if strength in (None, AUTO_STRENGTH) else float(strength),
                **_size_steps_seed(width, height, steps, seed))

        return run_tool_job(service, build)

    return edit_image


def control_function(service: GenerationService):
    settings = service.settings

    def generate_with_control(prompt: str, controlnet: str, control_image: str, control_mode: str,
                              control_scale: float, width: float, height: float, steps: float, seed: float) -> str:
        """Generate an image whose layout follows a control image, with a ControlNet Union file of this server.

        Args:
            prompt: What the image shows (English or Chinese).
            controlnet: The name of a ControlNet file on this server (the error for an unknown name lists them).
            control_image: The control image as base64 (PNG, JPEG or WebP; a data: URL works too).
            control_mode: How the control image becomes the control map: canny (its edges), lineart, scribble, gray, or map (use it as it is: a depth, pose or tile map made elsewhere).
            control_scale: How strongly the map steers the image, 0 to 2 (0.75 by default; 0.9 suits the 8-step 2.1 files).
            width: Image width in pixels, a multiple of 16.
            height: Image height in pixels, a multiple of 16.
            steps: Denoising steps; 8 is the model's default.
            seed: -1 for a random seed, or a seed to reproduce an earlier image.
        """
        def build() -> GenerationRequest:
            if not control_image:
                raise ServiceError("missing_field", field="control_image")
            return GenerationRequest(
                prompt=str(prompt or ""), controlnet=resolve_controlnet(controlnet, settings.controlnet_dir,
                                                                        required=True),
                control_image=decode_base64_image(str(control_image), settings, "control_image"),
                control_mode=str(control_mode or DOOR_DEFAULTS["control_mode"]),
                control_scale=float(DOOR_DEFAULTS["control_scale"] if control_scale is None else control_scale),
                **_size_steps_seed(width, height, steps, seed))

        return run_tool_job(service, build)

    return generate_with_control


def _size_steps_seed(width: Any, height: Any, steps: Any, seed: Any) -> dict[str, int]:
    return {"width": _whole(width, "width"), "height": _whole(height, "height"), "steps": _whole(steps, "steps"),
            "seed": _whole(seed, "seed")}


def _whole(value: Any, field: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ServiceError("invalid_value", field=field, detail=f"expected a number, got {value!r}") from None
    if number != int(number):
        raise ServiceError("invalid_value", field=field, detail=f"expected a whole number, got {value!r}")
    return int(number)
