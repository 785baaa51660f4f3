"""Tiny Z-Image transformers with random weights, written as real checkpoint files (test helpers).

The weights are chosen so parity tests can fail: pad tokens are random (diffusers leaves them
empty), the adaLN and final-layer weights have visible scale, and the q/k norm weights are
multiplied so attention is sharp. head_dim is 128 with the real RoPE axes, so every RoPE
frequency is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.network.config import TransformerConfig
from model.loading.transformer import COMFY_PREFIX, diffusers_to_comfy
from model.network.transformer import ZImageTransformer

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def tiny_config(**overrides) -> TransformerConfig:
    """dim 256 = 2 heads of 128 with the real axes [32, 48, 48]; two main layers, one refiner each."""
    fields = dict(dim=256, n_heads=2, n_kv_heads=2, n_layers=2, n_refiner_layers=1, cap_feat_dim=64,
                  axes_lens=(1536, 512, 512))
    fields.update(overrides)
    return TransformerConfig(**fields)


def random_state_dict(config: TransformerConfig, seed: int = 0, qk_gain: float = 4.0) -> dict[str, torch.Tensor]:
    """Diffusers-named fp32 tensors for `config` with test-friendly random values.

    `qk_gain` multiplies the q/k norm weights: 4 makes attention sharp (token mix-ups show in fp32
    parity), 1 keeps it smooth (bf16 error stays small and stable).
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ZImageTransformer(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {key: _random_tensor(key, shape, gen, qk_gain) for key, shape in shapes.items()}


def _random_tensor(key: str, shape: torch.Size, gen: torch.Generator, qk_gain: float) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen)
    if key.endswith("pad_token"):
        return noise
    if "norm_q" in key or "norm_k" in key:
        return qk_gain * (1.0 + 0.1 * noise)
    if "norm" in key or key == "cap_embedder.0.weight":
        return 1.0 + 0.1 * noise
    if key.endswith(".bias"):
        return 0.1 * noise
    scale = 2.0 if "adaLN_modulation" in key or "final_layer" in key else 1.0
    return scale * noise / shape[-1] ** 0.5


def write_hf_transformer(folder: Path, config: TransformerConfig, state_dict: dict[str, torch.Tensor],
                         shards: int = 1) -> Path:
    """A diffusers `transformer/` folder: config.json plus one file or `shards` files and an index."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0.dev0", **config.to_dict()}
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if shards == 1:
        save_file(state_dict, str(folder / DIFFUSERS_WEIGHTS))
        return folder
    keys = sorted(state_dict)
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({k: state_dict[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    index_json = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{DIFFUSERS_WEIGHTS}.index.json").write_text(json.dumps(index_json, indent=2))
    return folder


def write_comfy_transformer(path: Path, state_dict: dict[str, torch.Tensor], prefix: bool = False,
                            stray_norm_final: bool = False) -> Path:
    """A ComfyUI single file (fused qkv), optionally prefixed and with the stray norm_final.weight."""
    comfy = {k: v.contiguous() for k, v in diffusers_to_comfy(state_dict).items()}
    if stray_norm_final:
        comfy["norm_final.weight"] = torch.ones(state_dict["x_pad_token"].shape[-1])
    if prefix:
        comfy = {COMFY_PREFIX + k: v for k, v in comfy.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(comfy, str(path))
    return path


def tiny_inputs(config: TransformerConfig, latent_hw: list[tuple[int, int]], caption_lengths: list[int],
                seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random latents (C, 1, H, W) and caption features (L, cap_feat_dim), one per sample."""
    gen = torch.Generator().manual_seed(seed)
    latents = [torch.randn(config.in_channels, 1, h, w, generator=gen) for h, w in latent_hw]
    captions = [torch.randn(length, config.cap_feat_dim, generator=gen) for length in caption_lengths]
    return latents, captions


class CountingBackend:
    """A torch.compile backend that runs the captured graph eagerly and counts compilations."""

    def __init__(self):
        self.compilations = 0

    def __call__(self, graph_module, _example_inputs):
        self.compilations += 1
        return graph_module.forward
