"""The Inpaint accordion's editor <-> the `mask` request field: the reference is the editor's background, what
the user paints on its layers is the area to repaint.

The generate event reads the mask from a plain image input (white = repaint, as every other door sends it),
not from the editor itself: the editor hands its strokes to the server through its own blob upload, which
only Gradio's preprocessing can read, and the generate event takes raw values (app.ui.page).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from PIL import Image

from model.request import MASK_KEEP, MASK_REPAINT


def editor_value(reference_path: str | None) -> dict[str, Any] | None:
    """The editor showing `reference_path` as its background, with nothing painted (None: an empty editor)."""
    if not reference_path:
        return None
    return {"background": reference_path, "layers": [], "composite": reference_path}


def painted_mask(layers: Iterable[Image.Image], size: tuple[int, int]) -> Image.Image | None:
    """White wherever any layer has paint (alpha > 0), black elsewhere, at `size` (the reference's: a layer
    on a scaled canvas is scaled back, so the strokes stay where they were drawn); None when nothing is painted."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.NEAREST)
        painted |= np.asarray(alpha) > 0
    if not painted.any():
        return None
    return Image.fromarray(np.where(painted, MASK_REPAINT, MASK_KEEP).astype(np.uint8), mode="L")
