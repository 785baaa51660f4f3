"""Load the Flux VAE from a diffusers `vae/` folder or a BFL/ComfyUI `ae.safetensors`; BFL<->diffusers renames."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from model.errors import CheckpointError
from model.loading.safetensors_io import assign_state_dict, count_numbered, read_state_dict
from model.network.vae import FluxVAE, VAEConfig

logger = logging.getLogger(__name__)

# Key that only the BFL naming has (diffusers calls it `encoder.down_blocks.0.resnets.0.conv1.weight`).
_BFL_MARKER = "encoder.down.0.block.0.conv1.weight"
_DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0.conv1.weight"

# Renames that do not depend on the level index; applied to whole dotted segments, BFL -> diffusers.
_BFL_TO_DIFFUSERS_PARTS = [
    (".norm_out.", ".conv_norm_out."),
    (".mid.block_1.", ".mid_block.resnets.0."),
    (".mid.block_2.", ".mid_block.resnets.1."),
    (".mid.attn_1.norm.", ".mid_block.attentions.0.group_norm."),
    (".mid.attn_1.q.", ".mid_block.attentions.0.to_q."),
    (".mid.attn_1.k.", ".mid_block.attentions.0.to_k."),
    (".mid.attn_1.v.", ".mid_block.attentions.0.to_v."),
    (".mid.attn_1.proj_out.", ".mid_block.attentions.0.to_out.0."),
    (".nin_shortcut.", ".conv_shortcut."),
    (".downsample.", ".downsamplers.0."),
    (".upsample.", ".upsamplers.0."),
]
_ATTENTION_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


def bfl_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename BFL `ae.safetensors` keys to diffusers keys; 1x1-conv attention weights become Linear weights."""
    levels = count_numbered(sd, r"decoder\.up\.(\d+)\.")
    out = {}
    for key, tensor in sd.items():
        new = "." + key
        new = re.sub(r"^\.encoder\.down\.(\d+)\.block\.", r".encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^\.encoder\.down\.(\d+)\.downsample\.", r".encoder.down_blocks.\1.downsample.", new)
        new = re.sub(
            r"^\.decoder\.up\.(\d+)\.(block|upsample)\.",
            lambda m: f".decoder.up_blocks.{levels - 1 - int(m.group(1))}.{'resnets' if m.group(2) == 'block' else 'upsample'}.",
            new,
        )
        for old_part, new_part in _BFL_TO_DIFFUSERS_PARTS:
            new = new.replace(old_part, new_part)
        new = new[1:]
        if new.endswith(_ATTENTION_PROJECTIONS) and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        out[new] = tensor
    return out


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `bfl_to_diffusers`: diffusers keys to BFL keys, attention weights as 1x1 convs."""
    levels = count_numbered(sd, r"decoder\.up_blocks\.(\d+)\.")
    out = {}
    for key, tensor in sd.items():
        new = "." + key
        if new.endswith(_ATTENTION_PROJECTIONS) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        for old_part, new_part in reversed(_BFL_TO_DIFFUSERS_PARTS):
            new = new.replace(new_part, old_part)
        new = re.sub(r"^\.encoder\.down_blocks\.(\d+)\.resnets\.", r".encoder.down.\1.block.", new)
        new = re.sub(r"^\.encoder\.down_blocks\.(\d+)\.downsample\.", r".encoder.down.\1.downsample.", new)
        new = re.sub(
            r"^\.decoder\.up_blocks\.(\d+)\.(resnets|upsample)\.",
            lambda m: f".decoder.up.{levels - 1 - int(m.group(1))}.{'block' if m.group(2) == 'resnets' else 'upsample'}.",
            new,
        )
        out[new[1:]] = tensor
    return out


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str) -> VAEConfig:
    """Infer the architecture from diffusers-named tensor shapes (norm groups and scaling are Flux constants)."""
    try:
        levels = count_numbered(sd, r"encoder\.down_blocks\.(\d+)\.")
        return VAEConfig(
            in_channels=sd["encoder.conv_in.weight"].shape[1],
            out_channels=sd["decoder.conv_out.weight"].shape[0],
            latent_channels=sd["decoder.conv_in.weight"].shape[1],
            block_out_channels=tuple(
                sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)
            ),
            layers_per_block=count_numbered(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        )
    except KeyError as exc:
        raise CheckpointError(f"{source}: not a Flux VAE checkpoint (missing {exc.args[0]!r})") from None


def _to_diffusers_naming(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    if _DIFFUSERS_MARKER in sd:
        return sd
    if _BFL_MARKER in sd:
        return bfl_to_diffusers(sd)
    sample = ", ".join(sorted(sd)[:5])
    raise CheckpointError(
        f"{source}: not a Flux VAE: neither {_DIFFUSERS_MARKER!r} (diffusers) nor {_BFL_MARKER!r} (BFL) "
        f"is present; first keys: {sample}"
    )


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> FluxVAE:
    """Build the VAE on the meta device and assign weights from a `vae/` folder or an `ae.safetensors` file."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: VAE folder without config.json")
        config = VAEConfig.from_json(config_file)
        sd = _to_diffusers_naming(read_state_dict(path, dtype), str(path))
    else:
        sd = _to_diffusers_naming(read_state_dict(path, dtype), str(path))
        config = config_from_state_dict(sd, str(path))
    with torch.device("meta"):
        vae = FluxVAE(config)
    assign_state_dict(vae, sd, dtype=dtype, device=device, source=str(path))
    logger.info("loaded VAE from %s (%s, %s)", path, dtype, config.block_out_channels)
    return vae.eval().requires_grad_(False)
