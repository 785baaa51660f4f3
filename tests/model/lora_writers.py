"""Test helpers: random LoRAs written as real safetensors files in every published key format."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


@dataclass(frozen=True)
class LowRank:
    """One module's LoRA pair as trained: up [out, rank] and down [rank, in]."""

    down: torch.Tensor
    up: torch.Tensor


def linear_shapes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every nn.Linear, by module name."""
    return {name: (m.out_features, m.in_features) for name, m in module.named_modules()
            if isinstance(m, nn.Linear)}


def random_lora(shapes: dict[str, tuple[int, int]], rank: int, seed: int, strength: float = 0.3,
                targets: str = ".*") -> dict[str, LowRank]:
    """A random LoRA over every module matching `targets`, its update about `strength` times the
    size of a unit-scaled weight; q/k/v of a block share their down matrix (as a LoRA trained on
    the fused qkv does), so it can be written in every format."""
    generator = torch.Generator().manual_seed(seed)
    lora: dict[str, LowRank] = {}
    shared_down: dict[str, torch.Tensor] = {}
    for name, (out_features, in_features) in sorted(shapes.items()):
        if not re.search(targets, name):
            continue
        down = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
        if re.search(r"\.attention\.to_[qkv]$", name):
            down = shared_down.setdefault(name[: -len(".to_q")], down)
        up = torch.randn(out_features, rank, generator=generator) * strength / rank ** 0.5
        lora[name] = LowRank(down, up)
    return lora


def peft_format(lora: dict[str, LowRank], alpha: float | None = None, adapter_infix: bool = False
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """diffusers/PEFT: `transformer.<module>.lora_A.weight`; alpha in `lora_adapter_metadata`."""
    infix = ".default" if adapter_infix else ""
    tensors = {}
    for name, pair in lora.items():
        tensors[f"transformer.{name}.lora_A{infix}.weight"] = pair.down
        tensors[f"transformer.{name}.lora_B{infix}.weight"] = pair.up
    metadata = {"format": "pt"}
    if alpha is not None:
        rank = next(iter(lora.values())).down.shape[0]
        config = {"transformer.r": rank, "transformer.lora_alpha": alpha,
                  "transformer.target_modules": sorted(lora), "transformer.peft_type": "LORA"}
        metadata["lora_adapter_metadata"] = json.dumps(config)
    return tensors, metadata


def kohya_format(lora: dict[str, LowRank], alpha: float | None) -> dict[str, torch.Tensor]:
    """kohya: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`."""
    tensors = {}
    for name, pair in lora.items():
        base = "lora_unet_" + name.replace(".", "_")
        tensors[f"{base}.lora_down.weight"] = pair.down
        tensors[f"{base}.lora_up.weight"] = pair.up
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return tensors


def comfy_format(lora: dict[str, LowRank], alpha: float | None) -> dict[str, torch.Tensor]:
    """ComfyUI/original names with `diffusion_model.`: fused `attention.qkv`, `attention.out`,
    `x_embedder`, `final_layer` (diffusers' `single_file_utils.convert_z_image_transformer_checkpoint_to_diffusers`)."""
    tensors = {}
    fused: dict[str, dict[str, LowRank]] = {}
    for name, pair in lora.items():
        match = re.fullmatch(r"(.+\.attention)\.to_([qkv])", name)
        if match:
            fused.setdefault(match.group(1), {})[match.group(2)] = pair
            continue
        comfy = re.sub(r"^all_x_embedder\.\d+-\d+$", "x_embedder", name)
        comfy = re.sub(r"^all_final_layer\.\d+-\d+\.", "final_layer.", comfy)
        comfy = re.sub(r"\.attention\.to_out\.0$", ".attention.out", comfy)
        _put(tensors, f"diffusion_model.{comfy}", pair.down, pair.up, alpha)
    for block, parts in fused.items():
        assert sorted(parts) == ["k", "q", "v"], f"{block}: fused qkv needs q, k and v"
        up = torch.cat([parts[p].up for p in "qkv"], dim=0)
        _put(tensors, f"diffusion_model.{block}.qkv", parts["q"].down, up, alpha)
    return tensors


def dot_format(lora: dict[str, LowRank], alpha: float | None) -> dict[str, torch.Tensor]:
    """The dot variant ("Anime-Z"): `diffusion_model.<module, to.q>.lora.down.weight`."""
    tensors = {}
    for name, pair in lora.items():
        dotted = re.sub(r"\.to_([qkv])$", r".to.\1", name)
        base = f"diffusion_model.{dotted}"
        tensors[f"{base}.lora.down.weight"] = pair.down
        tensors[f"{base}.lora.up.weight"] = pair.up
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    return tensors


def _put(tensors: dict[str, torch.Tensor], base: str, down: torch.Tensor, up: torch.Tensor,
         alpha: float | None) -> None:
    tensors[f"{base}.lora_down.weight"] = down
    tensors[f"{base}.lora_up.weight"] = up
    if alpha is not None:
        tensors[f"{base}.alpha"] = torch.tensor(float(alpha))


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save as a real .safetensors file (contiguous copies, as trainers write them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def well_conditioned_state_dict(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """tests.model.tiny_transformer's random weights without their sharpening (q/k norms x4, adaLN
    and final layer x2). Sharpened, 1e-7 relative weight noise moves the output by ~4e-5, so two
    correct ways of rounding (merged weights vs a separate low-rank path) could not be compared at
    rtol 1e-4 / atol 1e-5; unsharpened it moves it by ~2e-6."""
    from tests.model.tiny_transformer import random_state_dict

    state = random_state_dict(config, seed)
    for key, tensor in state.items():
        if "norm_q" in key or "norm_k" in key:
            state[key] = tensor / 4.0
        elif ("adaLN_modulation" in key or "final_layer" in key) and key.endswith(".weight"):
            state[key] = tensor / 2.0
    return state
