"""Flux VAE: decode/encode equal diffusers' AutoencoderKL from both file layouts; banded decode equals untiled."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from model.errors import CheckpointError
from model.loading.vae import bfl_to_diffusers, diffusers_to_bfl, load_vae
from model.network.vae import VAEConfig

SCALE, SHIFT = 0.3611, 0.1159


@pytest.fixture(scope="module")
def oracles(tiny_model_dir) -> dict[str, AutoencoderKL]:
    """diffusers reading our HF folder, and diffusers' single-file reader on our ae.safetensors writer."""
    hf_vae = tiny_model_dir / "hf" / "vae"
    return {
        "hf": AutoencoderKL.from_pretrained(str(hf_vae), torch_dtype=torch.float32).eval(),
        "comfy": AutoencoderKL.from_single_file(str(tiny_model_dir / "comfy" / "ae.safetensors"),
                                                config=str(hf_vae), torch_dtype=torch.float32).eval(),
    }


@pytest.fixture(scope="module")
def ours(tiny_model_dir):
    return {
        "hf": load_vae(tiny_model_dir / "hf" / "vae"),
        "comfy": load_vae(tiny_model_dir / "comfy" / "ae.safetensors"),
    }


@pytest.mark.parametrize("layout", ["hf", "comfy"])
def test_decode_equals_diffusers(ours, oracles, layout):
    z_norm = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = oracles[layout].decode(z_norm / SCALE + SHIFT).sample
        decoded = ours[layout].decode(z_norm)
    assert decoded.shape == (2, 3, 48, 40)
    torch.testing.assert_close(decoded, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["hf", "comfy"])
def test_encode_equals_diffusers(ours, oracles, layout):
    images = torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        posterior = oracles[layout].encode(images).latent_dist
        mean, std = ours[layout].encode_moments(images)
        normalised = ours[layout].encode(images)
    torch.testing.assert_close(mean, posterior.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(std, posterior.std, atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised, (posterior.mode() - SHIFT) * SCALE, atol=1e-5, rtol=0)


def test_both_layouts_hold_the_same_weights(ours):
    hf, comfy = (ours[k].state_dict() for k in ("hf", "comfy"))
    assert hf.keys() == comfy.keys() and all(torch.equal(hf[k], comfy[k]) for k in hf)
    assert ours["comfy"].config == ours["hf"].config  # inferred from shapes == read from config.json


def test_bfl_renames_reverse_the_up_index_and_round_trip(ours):
    sd = ours["hf"].state_dict()
    bfl = diffusers_to_bfl(sd)
    assert torch.equal(bfl["decoder.up.0.block.0.conv1.weight"], sd["decoder.up_blocks.3.resnets.0.conv1.weight"])
    assert bfl["decoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in bfl and "decoder.up.3.upsample.conv.weight" in bfl
    back = bfl_to_diffusers(bfl)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_banded_decode_matches_untiled_within_two_levels(ours):
    vae = ours["hf"]
    z_norm = torch.randn(1, 16, 32, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = (vae.decode(z_norm) / 2 + 0.5).clamp(0, 1)
        # tile 3 -> bands of at most 24x24 = 576 output pixels: two bands even at latent resolution.
        banded = (vae.decode_tiled(z_norm, tile=3) / 2 + 0.5).clamp(0, 1)
    worst = (whole - banded).abs().max().item() * 255
    print(f"\nbanded vs untiled decode: max {worst:.5f} levels (tolerance 2)")
    assert worst <= 2.0


def test_banded_encode_matches_untiled(ours):
    vae = ours["comfy"]
    images = torch.rand(1, 3, 200, 136, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        whole = vae.encode_moments(images)
        banded = vae.encode_moments(images, tile=3)  # 576-pixel bands: 1-4 rows at each resolution
    for full, band in zip(whole, banded):
        torch.testing.assert_close(band, full, atol=1e-4, rtol=0)


def test_vae_config_rejects_quant_convs(tmp_path):
    raw = VAEConfig().to_diffusers_json() | {"use_quant_conv": True}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="use_quant_conv"):
        VAEConfig.from_json(tmp_path / "config.json")


def test_file_of_another_model_is_rejected(tmp_path):
    path = tmp_path / "ae.safetensors"
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a Flux VAE"):
        load_vae(path)


def test_missing_tensor_is_listed(tmp_path, ours):
    sd = diffusers_to_bfl(ours["hf"].state_dict())
    del sd["decoder.mid.attn_1.k.weight"]
    path = tmp_path / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match="to_k"):
        load_vae(path)
