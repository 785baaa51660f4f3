"""Loading a Z-Image-Turbo-Fun-Controlnet-Union file (1.0, 2.0, 2.1, 2.1-lite, Tile) from its own safetensors.

The version is read from the tensors, as ComfyUI does (diffusers 0.42.1 keys on `control_layers.14`
and so takes the 3-layer lite files for 1.0): the control input width (16 or 33 channels), whether
`control_noise_refiner` holds control blocks (`before_proj`/`after_proj`, 2.x) or plain blocks (1.0),
and, for 2.x, whether those refiner projections are all zero (2.0, whose refiner stage reuses the
control layers). Everything else must match the layout exactly: one CheckpointError names the file,
what is wrong and the fix.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch

from model.errors import CheckpointError
from model.loading.safetensors_io import assign_state_dict, count_numbered, read_state_dict
from model.network.config import TransformerConfig
from model.network.controlnet import CONTROL_CHANNELS, INPAINT_CHANNELS, ControlNetLayout, ZImageControlNet

logger = logging.getLogger(__name__)

_EMBEDDER = re.compile(r"control_all_x_embedder\.(\d+)-(\d+)\.weight")
_REFINER_PROJECTIONS = ("control_noise_refiner.0.before_proj.weight", "control_noise_refiner.0.after_proj.weight")
_FIX = "Fix: pick a Z-Image-Turbo-Fun-Controlnet-Union (1.0, 2.x, lite or Tile) .safetensors file, unmodified."


def load_controlnet(path: str | Path, transformer_config: TransformerConfig,
                    dtype: torch.dtype = torch.bfloat16) -> ZImageControlNet:
    """Build the ControlNet of `path` for a transformer of `transformer_config`, strictly, on the CPU."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: a ControlNet must be a .safetensors file. {_FIX}")
    state_dict = read_state_dict(path, dtype)
    layout = detect_controlnet_layout(state_dict, transformer_config, source=str(path))
    if layout.version == "2.0":  # its refiner blocks are never run (see model.network.controlnet)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("control_noise_refiner.")}
    with torch.device("meta"):
        net = ZImageControlNet(transformer_config, layout)
    assign_state_dict(net, state_dict, dtype, "cpu", source=str(path))
    logger.info("loaded ControlNet %s from %s: %d control layers, %d input channels", layout.label, path,
                layout.n_layers, layout.in_channels)
    return net.eval().requires_grad_(False)


def detect_controlnet_layout(state_dict: Mapping[str, torch.Tensor], config: TransformerConfig,
                             source: str = "ControlNet") -> ControlNetLayout:
    """The ControlNetLayout of a state dict (tensors or meta tensors), checked against the transformer."""
    embedders = {m.group(0): (int(m.group(1)), int(m.group(2))) for k in state_dict if (m := _EMBEDDER.fullmatch(k))}
    n_layers = count_numbered(state_dict, r"control_layers\.(\d+)\.")
    if not embedders or not n_layers:
        sample = ", ".join(sorted(state_dict)[:3]) or "no tensors"
        raise CheckpointError(f"{source}: not a Z-Image ControlNet Union file (no control_all_x_embedder / "
                              f"control_layers tensors; it holds e.g. {sample}). {_FIX}")
    key, (patch, f_patch) = sorted(embedders.items())[0]
    width, inputs = state_dict[key].shape
    in_channels = inputs // (patch * patch * f_patch)
    if in_channels not in (CONTROL_CHANNELS, INPAINT_CHANNELS):
        raise CheckpointError(f"{source}: its control input has {in_channels} channels; Z-Image ControlNet Union "
                              f"files take {CONTROL_CHANNELS} (1.0) or {INPAINT_CHANNELS} (2.x: control, mask, "
                              f"masked image). {_FIX}")
    if width != config.dim:
        raise CheckpointError(f"{source}: made for a transformer of width {width}, this model's is {config.dim}. "
                              "Fix: use a ControlNet made for Z-Image-Turbo.")
    if n_layers > config.n_layers:
        raise CheckpointError(f"{source}: {n_layers} control layers, more than the transformer's {config.n_layers}. "
                              f"{_FIX}")
    has_projections = _REFINER_PROJECTIONS[0] in state_dict
    if in_channels == CONTROL_CHANNELS:
        if has_projections:
            raise CheckpointError(f"{source}: {CONTROL_CHANNELS} input channels (1.0) but 2.x refiner blocks. {_FIX}")
        version = "1.0"
    elif _all_zero(state_dict, _REFINER_PROJECTIONS):
        version = "2.0"  # refiner projections missing or zero: the refiner stage reuses the control layers
    else:
        version = "2.1"
    n_refiner = 0 if version == "2.0" else count_numbered(state_dict, r"control_noise_refiner\.(\d+)\.")
    if version != "2.0" and n_refiner != config.n_refiner_layers:
        raise CheckpointError(f"{source}: {n_refiner} control refiner blocks, the transformer has "
                              f"{config.n_refiner_layers} noise-refiner layers. {_FIX}")
    stride = config.n_layers // n_layers  # published files: 30 // 6 = 5 (1.0), 30 // 15 = 2, 30 // 3 = 10 (lite)
    return ControlNetLayout(
        version=version, in_channels=in_channels, n_layers=n_layers, n_refiner_layers=n_refiner,
        layer_places=tuple(range(0, n_layers * stride, stride)),
        refiner_places=() if version == "1.0" else tuple(range(config.n_refiner_layers)),
    )


def _all_zero(state_dict: Mapping[str, torch.Tensor], keys: tuple[str, ...]) -> bool:
    present = [state_dict[k] for k in keys if k in state_dict]
    if any(t.is_meta for t in present):  # shapes only: a file that has the projections is read as 2.1
        return False
    return all(not torch.any(t) for t in present)
