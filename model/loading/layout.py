"""Recognise a weights folder: Hugging Face snapshot or the ComfyUI three-file set (+ tokenizer/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from model.errors import CheckpointError

logger = logging.getLogger(__name__)

HF_REQUIRED = ("model_index.json", "transformer", "text_encoder", "tokenizer", "vae")
COMFY_FILES = {
    "transformer": "z_image_turbo_bf16.safetensors",
    "text_encoder": "qwen_3_4b.safetensors",
    "vae": "ae.safetensors",
}
# ComfyUI keeps each file in its own models/ sub-folder; the hub repo nests those under split_files/.
COMFY_SUBFOLDERS = {
    "transformer": ("diffusion_models", "split_files/diffusion_models"),
    "text_encoder": ("text_encoders", "split_files/text_encoders"),
    "vae": ("vae", "split_files/vae"),
}


@dataclass(frozen=True)
class WeightsLayout:
    """Where each component's weights live inside a recognised folder."""

    kind: str  # "hf" or "comfy"
    root: Path
    transformer: Path
    text_encoder: Path
    vae: Path
    tokenizer: Path

    def files(self) -> dict[str, str]:
        """Component -> path relative to the root (for describe() and PNG metadata)."""
        return {
            name: str(getattr(self, name).relative_to(self.root))
            for name in ("transformer", "text_encoder", "vae", "tokenizer")
        }


def _find_comfy_file(root: Path, component: str) -> Path | None:
    name = COMFY_FILES[component]
    for folder in ("", *COMFY_SUBFOLDERS[component]):
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    return None


def _hf_layout(root: Path) -> WeightsLayout | None:
    if not all((root / entry).exists() for entry in HF_REQUIRED):
        return None
    return WeightsLayout("hf", root, root / "transformer", root / "text_encoder", root / "vae", root / "tokenizer")


def _comfy_layout(root: Path) -> WeightsLayout | None:
    found = {component: _find_comfy_file(root, component) for component in COMFY_FILES}
    if any(path is None for path in found.values()) or not (root / "tokenizer").is_dir():
        return None
    return WeightsLayout("comfy", root, found["transformer"], found["text_encoder"], found["vae"], root / "tokenizer")


def _listing(root: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:20]) + (f", ... ({len(entries)} entries)" if len(entries) > 20 else "")
    return shown or "nothing (the folder is empty)"


def find_layout(path: str | Path) -> WeightsLayout | None:
    """The layout of `path`, or None when it is no weights folder (torch-free: the app checks with it)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return None
    return _hf_layout(root) or _comfy_layout(root)


def detect_layout(path: str | Path) -> WeightsLayout:
    """Recognise `path`; raise CheckpointError naming what was found and what either layout needs."""
    root = Path(path).expanduser()
    layout = find_layout(root)
    if layout is not None:
        logger.info("weights at %s: %s layout", root, layout.kind)
        return layout
    if not root.is_dir():
        raise CheckpointError(
            f"weights folder {root} does not exist. Fix: download the weights "
            "(.venv/bin/python scripts/download_weights.py) or point the server at the folder that holds them."
        )
    raise CheckpointError(
        f"{root} is not a Z-Image-Turbo weights folder. Found: {_listing(root)}. Expected either "
        f"the Hugging Face layout ({', '.join(HF_REQUIRED)}; scheduler/ optional) or the ComfyUI files "
        f"({', '.join(COMFY_FILES.values())}, each at the top or in its ComfyUI sub-folder) "
        "plus a tokenizer/ folder."
    )
