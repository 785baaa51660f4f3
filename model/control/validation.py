"""Checks of a request's control and mask fields, before any work (InvalidRequestError naming the field)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from model.control.preprocess import CONTROL_MODES
from model.errors import InvalidRequestError

if TYPE_CHECKING:
    from model.network.controlnet import ControlNetLayout
    from model.request import GenerationRequest

MAX_CONTROL_PIXELS = 4096 * 4096  # control image and mask: the largest upload the doors accept
MAX_CONTROL_SCALE = 2.0


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(message, field=field)


def _check_image(image: object, field: str) -> None:
    _check(isinstance(image, Image.Image), field, f"{field} must be a PIL image (decode the upload first)")
    pixels = image.width * image.height
    _check(pixels <= MAX_CONTROL_PIXELS, field,
           f"{field} is {image.width}x{image.height} = {pixels} pixels, more than the limit of "
           f"{MAX_CONTROL_PIXELS}; resize it (it is scaled to the output size anyway)")


def validate_control(request: "GenerationRequest") -> None:
    """Raise InvalidRequestError for the first mask/control field the engine cannot honour."""
    if request.mask is not None:
        _check_image(request.mask, "mask")
        _check(request.reference_image is not None, "mask",
               "a mask needs a reference_image to inpaint: send the image the mask was drawn on")
        reference = request.reference_image
        _check(isinstance(reference, Image.Image) and reference.size == request.mask.size, "mask",
               f"mask is {request.mask.width}x{request.mask.height} but reference_image is "
               f"{getattr(reference, 'width', '?')}x{getattr(reference, 'height', '?')}; draw the mask on the "
               "reference image so both have the same size")
    if request.control_image is not None:
        _check_image(request.control_image, "control_image")
        _check(request.controlnet is not None, "control_image",
               "control_image needs a controlnet: pick a ControlNet Union file")
    _check(request.controlnet is None or (isinstance(request.controlnet, str) and request.controlnet != ""),
           "controlnet", "controlnet must be the path of a ControlNet Union .safetensors file")
    _check(request.control_mode in CONTROL_MODES, "control_mode",
           f"control_mode must be one of {', '.join(CONTROL_MODES)}, got {request.control_mode!r}")
    scale = request.control_scale
    _check(isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 <= scale <= MAX_CONTROL_SCALE,
           "control_scale", f"control_scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {scale!r} "
                            "(0.75 by default; 0.9 suits the 8-step 2.1 files)")


def validate_control_inputs(request: "GenerationRequest", layout: "ControlNetLayout") -> None:
    """With the ControlNet loaded: it needs a control image, or (2.x only) a mask to inpaint with."""
    if layout.takes_mask:
        _check(request.control_image is not None or request.mask is not None, "control_image",
               f"ControlNet {layout.label} needs a control_image or a mask (ControlNet inpainting)")
    else:
        _check(request.control_image is not None, "control_image",
               f"ControlNet {layout.label} needs a control_image (it has no inpainting inputs)")
