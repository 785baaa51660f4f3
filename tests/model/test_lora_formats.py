"""LoRA key formats: the same update written in every published format merges to identical weights."""

from __future__ import annotations

import json

import pytest
import torch

from model.lora.manager import LoraManager
from model.lora.formats import build_lookup, resolve, split_key
from model.request import LoraSpec
from model.network.transformer import ZImageTransformer
from tests.model.lora_writers import (comfy_format, dot_format, kohya_format, linear_shapes, peft_format,
                                      random_lora, write)
from tests.model.tiny_transformer import random_state_dict, tiny_config

RANK, ALPHA, STRENGTH = 4, 8.0, 0.7


@pytest.fixture(scope="module")
def base():
    """Our tiny fp32 transformer with random weights (module names = diffusers keys)."""
    config = tiny_config()
    model = ZImageTransformer(config)
    model.load_state_dict(random_state_dict(config))
    return model.eval()


@pytest.fixture(scope="module")
def base_state(base):
    return {k: v.clone() for k, v in base.state_dict().items()}


@pytest.fixture(scope="module")
def lora(base):
    """Every Linear of the model targeted: attention, feed-forward, adaLN, embedders, final layer."""
    return random_lora(linear_shapes(base), RANK, seed=5)


def _merged(base, base_state, path, scale=STRENGTH):
    """Weights after applying one LoRA file, then the base restored for the next case."""
    manager = LoraManager(base)
    reports = manager.activate((LoraSpec(str(path), scale),))
    merged = {k: v.clone() for k, v in base.state_dict().items()}
    manager.clear()
    assert all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())
    return merged, reports[0]


def test_every_linear_is_targeted(base, lora):
    shapes = linear_shapes(base)
    assert set(lora) == set(shapes)
    for expected in ("all_x_embedder.2-1", "all_final_layer.2-1.linear", "all_final_layer.2-1.adaLN_modulation.1",
                     "t_embedder.mlp.0", "cap_embedder.1", "layers.1.adaLN_modulation.0",
                     "noise_refiner.0.feed_forward.w2", "context_refiner.0.attention.to_out.0"):
        assert expected in shapes


def test_all_formats_merge_to_identical_weights(tmp_path, base, base_state, lora):
    tensors, metadata = peft_format(lora, alpha=ALPHA)
    peft_path = write(tmp_path / "peft.safetensors", tensors, metadata)
    reference, report = _merged(base, base_state, peft_path)
    assert report.matched_keys == 2 * len(lora) and report.unmatched_keys == ()
    assert report.modules == len(lora)

    # Independent check of the arithmetic: W + strength * alpha/rank * up @ down, in fp64.
    for name, pair in lora.items():
        update = STRENGTH * ALPHA / RANK * (pair.up.double() @ pair.down.double())
        expected = base_state[f"{name}.weight"].double() + update
        torch.testing.assert_close(reference[f"{name}.weight"].double(), expected, rtol=1e-6, atol=1e-6)
    changed = max((reference[k] - base_state[k]).abs().max().item() for k in reference)
    print(f"\n[lora formats] largest weight change {changed:.3g}")
    assert changed > 0.1

    peft_infix_alpha_keys = peft_format(lora, adapter_infix=True)[0]
    peft_infix_alpha_keys.update({f"transformer.{name}.alpha": torch.tensor(ALPHA) for name in lora})
    lycoris = {k.replace("lora_unet_", "lycoris_"): v for k, v in kohya_format(lora, ALPHA).items()}
    others = {
        "kohya": kohya_format(lora, ALPHA),
        "lycoris": lycoris,
        "comfy_fused_qkv": comfy_format(lora, ALPHA),
        "dot": dot_format(lora, ALPHA),
        "peft_default_infix_alpha_keys": peft_infix_alpha_keys,
    }
    for fmt, tensors in others.items():
        merged, report = _merged(base, base_state, write(tmp_path / f"{fmt}.safetensors", tensors))
        assert report.unmatched_keys == (), fmt
        assert report.matched_keys == len(tensors), fmt
        assert report.modules == len(lora), fmt
        for key in reference:
            assert torch.equal(merged[key], reference[key]), f"{fmt}: {key} differs from the PEFT merge"


def test_without_alpha_the_scale_is_one(tmp_path, base, base_state, lora):
    plain, _ = _merged(base, base_state, write(tmp_path / "plain.safetensors", kohya_format(lora, None)), scale=1.0)
    name = "layers.0.feed_forward.w1"
    expected = base_state[f"{name}.weight"] + lora[name].up @ lora[name].down
    torch.testing.assert_close(plain[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6)


def test_peft_alpha_pattern_and_rslora_from_metadata(tmp_path, base, base_state, lora):
    tensors, _ = peft_format(lora)
    config = {"transformer.r": RANK, "transformer.lora_alpha": 2.0, "transformer.use_rslora": True,
              "transformer.alpha_pattern": {"feed_forward.w1": 16.0}}
    merged, _ = _merged(base, base_state, write(tmp_path / "rs.safetensors", tensors,
                                                {"lora_adapter_metadata": json.dumps(config)}), scale=1.0)
    for name, alpha in (("layers.0.feed_forward.w1", 16.0), ("layers.0.feed_forward.w2", 2.0)):
        expected = base_state[f"{name}.weight"] + alpha / RANK ** 0.5 * (lora[name].up @ lora[name].down)
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=1e-6, atol=1e-6)


def test_comfy_duplicates_of_split_keys_are_applied_once(tmp_path, base, base_state, lora):
    """Files like "Anime-Z" hold the same update as to.q/k/v AND as fused qkv / bare out."""
    dot = dot_format(lora, ALPHA)
    comfy = comfy_format(lora, ALPHA)
    duplicates = {k: v for k, v in comfy.items() if ".attention.qkv." in k or ".attention.out." in k}
    once, _ = _merged(base, base_state, write(tmp_path / "dot.safetensors", dot))
    both, report = _merged(base, base_state, write(tmp_path / "both.safetensors", {**dot, **duplicates}))
    assert sorted(report.redundant_keys) == sorted(duplicates)
    assert all(torch.equal(both[k], once[k]) for k in once)


def test_keys_for_other_modules_are_reported_not_guessed(tmp_path, base, base_state, lora):
    tensors, metadata = peft_format(lora)
    extra = {"text_encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(RANK, 8),
             "text_encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, RANK),
             "transformer.layers.0.attention.norm_q.lora_A.weight": torch.zeros(RANK, 8),
             "transformer.layers.0.something_else": torch.zeros(1)}
    _, report = _merged(base, base_state, write(tmp_path / "extra.safetensors", {**tensors, **extra}, metadata))
    assert report.unmatched_keys == tuple(sorted(extra))
    assert report.matched_keys == len(tensors)


@pytest.mark.parametrize("key, module", [
    ("lora_unet_layers_0_attention_to_q.lora_down.weight", "layers.0.attention.to_q"),
    ("lora_unet_layers_1_attention_to_out_0.lora_up.weight", "layers.1.attention.to_out.0"),
    ("lora_unet_noise_refiner_0_feed_forward_w3.alpha", "noise_refiner.0.feed_forward.w3"),
    ("lora_unet_context_refiner_0_attention_out.lora_up.weight", "context_refiner.0.attention.to_out.0"),
    ("lora_unet_all_x_embedder_2_1.lora_down.weight", "all_x_embedder.2-1"),
    ("lycoris_layers_1_adaLN_modulation_0.lora_down.weight", "layers.1.adaLN_modulation.0"),
    ("diffusion_model.final_layer.adaLN_modulation.1.lora_up.weight", "all_final_layer.2-1.adaLN_modulation.1"),
    ("model.diffusion_model.x_embedder.lora_down.weight", "all_x_embedder.2-1"),
    ("base_model.model.t_embedder.mlp.2.lora_A.default.weight", "t_embedder.mlp.2"),
    ("diffusion_model.layers.1.attention.to.v.lora.up.weight", "layers.1.attention.to_v"),
    ("cap_embedder.1.lora_B.weight", "cap_embedder.1"),
])
def test_key_spellings_resolve_to_module(base, key, module):
    ref, _ = split_key(key)
    assert resolve(ref, build_lookup(linear_shapes(base))).modules == (module,)


def test_fused_qkv_resolves_to_three_modules(base):
    target = resolve("diffusion_model.layers.0.attention.qkv", build_lookup(linear_shapes(base)))
    assert target.modules == tuple(f"layers.0.attention.to_{p}" for p in "qkv")
    assert resolve("lora_unet_layers_0_attention_qkv", build_lookup(linear_shapes(base))) == target
