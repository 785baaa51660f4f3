"""ControlNet Union files offered by name, like LoRAs: ZIMAGE_CONTROLNET_DIR/<name>.safetensors -> the engine's
path. A client never sends a path: only a name that the LoRA name rule keeps inside the folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from PIL import Image

from app.errors import ServiceError
from app.loras import NAME_PATTERN, SUFFIX, list_lora_names
from app.fields import FIELDS
from app.redaction import public_path
from model.request import GenerationRequest


def list_controlnet_names(controlnet_dir: Path) -> list[str]:
    """Names (file stems) of the ControlNet files in `controlnet_dir`, sorted; empty when it is missing."""
    return list_lora_names(controlnet_dir)  # the same folder rule: <name>.safetensors regular files


def resolve_controlnet(name: str | None, controlnet_dir: Path, field: str = "controlnet",
                       required: bool = False) -> str | None:
    """A ControlNet name -> the absolute path of its file inside `controlnet_dir` (None / "" -> None, unless
    `required`).

    Unknown names, and anything that is not a plain name ("../x", "/etc/x", "a/b"), are an error naming
    `field` and listing the available names (never the folder's absolute path)."""
    if not name and not required:
        return None
    path = controlnet_dir / f"{name}{SUFFIX}" if isinstance(name, str) else controlnet_dir
    # The name pattern keeps requests inside the folder: no separators, no "..", no absolute paths. A symlink
    # the admin put there (e.g. to ComfyUI's models/controlnet) is followed, as for LoRAs.
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or not path.is_file():
        available = ", ".join(list_controlnet_names(controlnet_dir)) or "-"
        raise ServiceError("controlnet_not_found", field=field, name=name, folder=public_path(controlnet_dir),
                           available=available)
    return str(path.resolve())


def controlnet_name(path: str | None) -> str | None:
    """The name a resolved ControlNet path was picked by (its file stem): what recipes and snippets carry."""
    return Path(path).stem if path else None


def image_summary(image: Image.Image | None) -> dict | None:
    """What a recipe records of an input image: its size and a hash of its pixels (the file stays with the user)."""
    if image is None:
        return None
    digest = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
    return {"used": True, "width": image.width, "height": image.height, "sha256": digest}


def control_recipe(request: GenerationRequest) -> dict[str, Any]:
    """The ControlNet and mask entries of the PNG recipe: the ControlNet by name (never its path), its settings
    only when one is used, the mask and control image as summaries (image_summary)."""
    used = request.controlnet is not None
    values: dict[str, Any] = {field.name: getattr(request, field.name) if used else None
                              for field in FIELDS if field.with_controlnet_only and field.kind is not object}
    return {**values, "controlnet": controlnet_name(request.controlnet), "mask": image_summary(request.mask),
            "control_image": image_summary(request.control_image)}
