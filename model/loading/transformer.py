"""Loading the Z-Image transformer from a diffusers folder or a ComfyUI single file.

The diffusers layout (`transformer/` with config.json and one or more safetensors shards) loads
as is, because our attribute names equal its keys. The ComfyUI layout (fused `attention.qkv`,
a few renames, maybe a `model.diffusion_model.` prefix and a stray `norm_final.weight`) is
converted by one table here; its config is inferred from the tensor shapes. With `fuse=True` either
layout loads into the fused model (model.network.fused: to_qkv, w13), the parts concatenated by rows.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from model.network.config import Z_IMAGE_LATENT_CHANNELS, TransformerConfig
from model.errors import CheckpointError
from model.loading.safetensors_io import assign_state_dict, find_weight_source, read_shapes, read_state_dict
from model.network.fused import fuse_state_dict
from model.network.transformer import ZImageTransformer

logger = logging.getLogger(__name__)

COMFY_PREFIX = "model.diffusion_model."
STRAY_KEYS = ("norm_final.weight",)  # left by old ComfyUI Lumina2 code; no module uses it
# diffusers -> ComfyUI renames of key fragments (q/k/v fusion is handled separately).
_RENAMES = (
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)
_QKV = (".attention.to_q.weight", ".attention.to_k.weight", ".attention.to_v.weight")
_FUSED_QKV = ".attention.qkv.weight"
_Z_IMAGE_MARKERS = ("cap_embedder.1.weight", "layers.0.adaLN_modulation.0.weight", "x_pad_token")


def load_transformer(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                     config: TransformerConfig | Mapping[str, Any] | None = None,
                     fuse: bool = False) -> ZImageTransformer:
    """Build ZImageTransformer on the meta device and fill it from `path`, strictly.

    `path` is a diffusers `transformer/` folder (or a snapshot root holding one) or a ComfyUI
    single `.safetensors` file. `config` replaces the config.json / inferred config when it is a
    TransformerConfig, or overrides single fields of it when it is a mapping. `fuse` builds the model
    with fused projections and q/k norm + RoPE (ZImageTransformer(fused=True)).
    """
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "transformer").is_dir():
        path = path / "transformer"
    if path.is_dir():
        weights = find_weight_source(path)
        base = TransformerConfig.from_json(path / "config.json") if not isinstance(config, TransformerConfig) \
            else config
    else:
        weights, base = path, config if isinstance(config, TransformerConfig) else None
    state_dict = _read_z_image_state_dict(weights, dtype)
    if base is None:
        base = TransformerConfig.from_state_dict(state_dict, source=str(weights))
    final = _apply_overrides(base, config)
    if fuse:
        state_dict = fuse_state_dict(state_dict)
    with torch.device("meta"):
        model = ZImageTransformer(final, fused=fuse)
    assign_state_dict(model, state_dict, dtype, device, source=str(weights))
    logger.info("loaded transformer from %s: %d layers, dim %d, %s on %s%s",
                weights, final.n_layers, final.dim, dtype, device, ", fused projections" if fuse else "")
    return model.eval().requires_grad_(False)


def diffusers_to_comfy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> the ComfyUI single-file layout (fused qkv, renamed embedder/final layer)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(_QKV[1]) or key.endswith(_QKV[2]):
            continue  # fused together with to_q below
        if key.endswith(_QKV[0]):
            block = key[: -len(_QKV[0])]
            out[block + _FUSED_QKV] = torch.cat([state_dict[block + suffix] for suffix in _QKV])
            continue
        key = re.sub(r"^all_x_embedder\.\d+-\d+\.", "x_embedder.", key)
        key = re.sub(r"^all_final_layer\.\d+-\d+\.", "final_layer.", key)
        for ours, theirs in _RENAMES:
            key = key.replace(ours, theirs)
        out[key] = tensor
    return out


def comfy_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI single-file keys -> diffusers keys: prefix stripped, stray keys dropped, qkv split."""
    state_dict = _strip_comfy_prefix(state_dict)
    patch_key = _patch_key(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key in STRAY_KEYS:
            logger.debug("ignoring unused tensor %s", key)
            continue
        if key.endswith(_FUSED_QKV):
            if tensor.shape[0] % 3:
                raise CheckpointError(f"{key} has {tensor.shape[0]} rows, not three equal q/k/v parts")
            block = key[: -len(_FUSED_QKV)]
            for suffix, part in zip(_QKV, tensor.chunk(3, dim=0)):
                out[block + suffix] = part
            continue
        key = re.sub(r"^x_embedder\.", f"all_x_embedder.{patch_key}.", key)
        key = re.sub(r"^final_layer\.", f"all_final_layer.{patch_key}.", key)
        for ours, theirs in _RENAMES:
            key = key.replace(theirs, ours)
        out[key] = tensor
    return out


def detect_layout(keys: Mapping[str, Any] | list[str]) -> str:
    """"diffusers" or "comfy" for a Z-Image transformer; raises for any other checkpoint."""
    names = {k[len(COMFY_PREFIX):] if k.startswith(COMFY_PREFIX) else k for k in keys}
    if not all(marker in names for marker in _Z_IMAGE_MARKERS):
        raise CheckpointError(f"not a Z-Image transformer checkpoint: expected tensors like "
                              f"{', '.join(_Z_IMAGE_MARKERS)} (diffusers or ComfyUI layout), but the file "
                              f"looks like {_describe(keys)}. Fix: point to the Z-Image(-Turbo) transformer "
                              "(diffusion model) weights.")
    return "comfy" if "x_embedder.weight" in names or any(k.endswith(_FUSED_QKV) for k in names) else "diffusers"


def _read_z_image_state_dict(weights: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Check the headers say Z-Image before reading gigabytes, then read and convert to diffusers keys."""
    shapes = read_shapes(weights)
    try:
        layout = detect_layout(list(shapes))
    except CheckpointError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
    state_dict = read_state_dict(weights, dtype=dtype)
    if layout == "comfy" or any(k.startswith(COMFY_PREFIX) for k in state_dict):
        try:
            state_dict = comfy_to_diffusers(state_dict)
        except CheckpointError as exc:
            raise CheckpointError(f"{weights}: {exc}. Fix: use an unmodified checkpoint.") from None
    return state_dict


def _strip_comfy_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the `model.diffusion_model.` part of a file that has one (all-in-one files hold more)."""
    if not any(k.startswith(COMFY_PREFIX) for k in state_dict):
        return dict(state_dict)
    kept = {k[len(COMFY_PREFIX):]: v for k, v in state_dict.items() if k.startswith(COMFY_PREFIX)}
    if len(kept) != len(state_dict):
        logger.info("ignoring %d tensors outside %s (text encoder / VAE of an all-in-one file)",
                    len(state_dict) - len(kept), COMFY_PREFIX)
    return kept


def _patch_key(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The "p-f" module name of the one patch embedder, from its input width (p*p*16 for f = 1)."""
    weight = state_dict.get("x_embedder.weight")
    if weight is None:
        return "2-1"
    patch = math.isqrt(weight.shape[1] // Z_IMAGE_LATENT_CHANNELS)
    if patch * patch * Z_IMAGE_LATENT_CHANNELS != weight.shape[1]:
        raise CheckpointError(f"x_embedder.weight input width {weight.shape[1]} is not p*p*"
                              f"{Z_IMAGE_LATENT_CHANNELS} for any patch size p")
    return f"{patch}-1"


def _apply_overrides(base: TransformerConfig, config: TransformerConfig | Mapping[str, Any] | None
                     ) -> TransformerConfig:
    if config is None or isinstance(config, TransformerConfig):
        return base
    try:
        return base.replace(**dict(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"transformer config override {dict(config)} is invalid: {exc}") from exc


_OTHER_MODELS = (  # (key fragment, what a file with it probably is)
    ("decoder.up", "a VAE (autoencoder)"),
    ("encoder.down", "a VAE (autoencoder)"),
    ("self_attn.q_proj", "a text encoder (e.g. Qwen3)"),
    ("embed_tokens", "a text encoder (e.g. Qwen3)"),
    ("input_blocks.", "an SD/SDXL UNet"),
    ("double_blocks.", "a Flux transformer"),
    ("adaLN_modulation.1.", "a Lumina 2 (NextDiT) model"),
    ("lora_", "a LoRA (load it as a LoRA, not as the base model)"),
)


def _describe(keys: Mapping[str, Any] | list[str]) -> str:
    names = list(keys)
    guess = next((what for fragment, what in _OTHER_MODELS if any(fragment in k for k in names)),
                 "an unknown model")
    return f"{guess} ({len(names)} tensors, first keys: {', '.join(sorted(names)[:3]) or 'none'})"
