"""Fused projections (to_qkv, w13) and fused q/k norm + RoPE: loaded from both checkpoint layouts, the
same numbers as the unfused model, and LoRAs (every key format) applied to the right rows and removed
bit for bit, merged and on fp8 layers."""

from __future__ import annotations

import pytest
import torch

from model.loading.transformer import load_transformer
from model.lora.manager import LoraManager
from model.memory.fp8 import Float8Linear, quantize_linears_fp8
from model.network.fused import FusedLinear, fuse_state_dict
from model.network.rope import apply_rope, apply_rope_pairs, rope_pairs, rope_table
from model.network.transformer import Attention, ZImageTransformer
from model.request import LoraSpec
from tests.model.lora_writers import comfy_format, kohya_format, linear_shapes, peft_format, random_lora, write
from tests.model.tiny_transformer import (random_state_dict, tiny_config, tiny_inputs, write_comfy_transformer,
                                          write_hf_transformer)

# Same tolerances as the fp32 parity tests against diffusers (tests/model/test_transformer.py): fusing
# only changes how the matmuls are blocked, not what they compute.
RTOL, ATOL = 1e-4, 1e-5
FP8_ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = tiny_config()
    state_dict = random_state_dict(config)
    root = tmp_path_factory.mktemp("fused")
    hf = write_hf_transformer(root / "transformer", config, state_dict)
    comfy = write_comfy_transformer(root / "comfy.safetensors", state_dict, prefix=True)
    return {"config": config, "hf": hf, "comfy": comfy}


def _run(model, config, dtype=torch.float32):
    latents, captions = tiny_inputs(config, [(8, 8), (10, 14)], [5, 40])
    with torch.inference_mode():
        return model([x.to(dtype) for x in latents], torch.tensor([0.3, 0.7]), [c.to(dtype) for c in captions])


@pytest.mark.parametrize("layout", ["hf", "comfy"])
def test_fused_load_matches_unfused_model(checkpoint, layout):
    config = checkpoint["config"]
    unfused = load_transformer(checkpoint[layout], dtype=torch.float32)
    fused = load_transformer(checkpoint[layout], dtype=torch.float32, fuse=True)
    attention = fused.layers[0].attention
    assert isinstance(attention.to_qkv, FusedLinear) and not hasattr(attention, "to_q")
    assert isinstance(fused.layers[0].feed_forward.w13, FusedLinear) and not hasattr(fused.layers[0].feed_forward, "w1")
    expected_qkv = torch.cat([unfused.layers[0].attention.to_q.weight, unfused.layers[0].attention.to_k.weight,
                              unfused.layers[0].attention.to_v.weight])
    assert torch.equal(attention.to_qkv.weight, expected_qkv)
    for got, want in zip(_run(fused, config), _run(unfused, config)):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_fused_bf16_is_no_further_from_fp32_than_unfused(checkpoint):
    """The fused q/k norm + RoPE rounds to bf16 once instead of twice: never worse."""
    config = checkpoint["config"]
    reference = _run(load_transformer(checkpoint["hf"], dtype=torch.float32), config)
    errors = {}
    for fuse in (False, True):
        model = load_transformer(checkpoint["hf"], dtype=torch.bfloat16, fuse=fuse)
        out = _run(model, config, torch.bfloat16)
        errors[fuse] = max((o.float() - r).abs().max().item() for o, r in zip(out, reference))
    assert errors[True] <= errors[False] * 1.1, errors


def test_fuse_state_dict_concatenates_parts_and_leaves_the_rest():
    config = tiny_config()
    state_dict = random_state_dict(config)
    fused = fuse_state_dict(state_dict)
    with torch.device("meta"):
        expected_keys = set(ZImageTransformer(config, fused=True).state_dict())
    assert set(fused) == expected_keys
    assert torch.equal(fused["layers.1.feed_forward.w13.weight"],
                       torch.cat([state_dict["layers.1.feed_forward.w1.weight"],
                                  state_dict["layers.1.feed_forward.w3.weight"]]))
    assert fused["layers.1.feed_forward.w2.weight"] is state_dict["layers.1.feed_forward.w2.weight"]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, snapshot):
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], snapshot[k]) for k in state)


@pytest.fixture(scope="module")
def lora_files(checkpoint, tmp_path_factory):
    """One LoRA on every Linear in PEFT and kohya spelling, and one in ComfyUI spelling (fused qkv)."""
    folder = tmp_path_factory.mktemp("fused-loras")
    shapes = linear_shapes(load_transformer(checkpoint["hf"], dtype=torch.float32))
    lora = random_lora(shapes, 4, seed=3)
    tensors, metadata = peft_format(lora, alpha=8.0)
    attention_ffn = random_lora(shapes, 2, seed=4, targets="attention|feed_forward")
    return {"peft": write(folder / "peft.safetensors", tensors, metadata),
            "kohya": write(folder / "kohya.safetensors", kohya_format(attention_ffn, 1.0)),
            "comfy": write(folder / "comfy.safetensors", comfy_format(attention_ffn, 2.0))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_on_fused_model_equals_lora_on_unfused_and_is_removed_exactly(checkpoint, lora_files, dtype):
    config = checkpoint["config"]
    specs = [(LoraSpec(str(lora_files["peft"]), 0.8), LoraSpec(str(lora_files["kohya"]), -0.5)),
             (LoraSpec(str(lora_files["comfy"]), 1.2),)]
    unfused = load_transformer(checkpoint["hf"], dtype=dtype)
    fused = load_transformer(checkpoint["hf"], dtype=dtype, fuse=True)
    base = _snapshot(fused)
    managers = {False: LoraManager(unfused), True: LoraManager(fused)}
    for lora_set in specs:
        reports = {fuse: manager.activate(lora_set) for fuse, manager in managers.items()}
        assert [r.matched_keys for r in reports[True]] == [r.matched_keys for r in reports[False]]
        assert all(not r.unmatched_keys for r in reports[True])
        # Merging into rows of a fused weight rounds each weight exactly as merging into the part does.
        assert torch.equal(fused.layers[0].attention.to_qkv.weight[config.dim:2 * config.dim],
                           unfused.layers[0].attention.to_k.weight)
        assert torch.equal(fused.noise_refiner[0].feed_forward.w13.weight[config.ffn_dim:],
                           unfused.noise_refiner[0].feed_forward.w3.weight)
        assert not _same(fused, base)
    managers[True].clear()
    assert _same(fused, base)


def test_lora_on_fused_fp8_layers_uses_the_runtime_path_on_the_right_rows(checkpoint, lora_files):
    """fp8 layers get a LoRA as a forward hook; on a fused layer it must add to its part's rows only."""
    config = checkpoint["config"]
    models = {}
    for fuse in (False, True):
        model = load_transformer(checkpoint["hf"], dtype=torch.float32, fuse=fuse)
        quantize_linears_fp8(model)
        models[fuse] = model
    qkv = models[True].layers[0].attention.to_qkv
    assert isinstance(qkv, Float8Linear) and qkv.fused_parts == (("to_q", config.dim), ("to_k", config.dim),
                                                                 ("to_v", config.dim))
    base = _snapshot(models[True])
    plain = _run(models[True], config)
    for fuse, model in models.items():
        LoraManager(model).activate((LoraSpec(str(lora_files["comfy"]), 1.0),))
    with_lora = {fuse: _run(model, config) for fuse, model in models.items()}
    # Per-row fp8 scales make the fused weight's rows exactly the parts' rows; what remains is fp32 rounding
    # of differently blocked matmuls (plus the row scale applied after them), amplified by the sharp
    # attention of the test model: within FP8_ATOL, a hundred times smaller than the LoRA's own effect.
    for got, want in zip(with_lora[True], with_lora[False]):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=FP8_ATOL)
    effect = max((a - b).abs().max().item() for a, b in zip(with_lora[True], plain))
    assert effect > 100 * FP8_ATOL, effect
    assert _same(models[True], base)  # the runtime path never touches the fp8 weights


def test_rope_pairs_and_fused_norm_rope_equal_the_complex_definition():
    """The blocks use real cos/sin pairs (compilable); the complex apply_rope is the tested definition."""
    config = tiny_config()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 40, config.n_heads, config.head_dim, generator=gen)
    positions = torch.randint(0, 60, (40, 3), generator=gen)
    table = rope_table(positions, config.axes_dims, config.rope_theta)[None].expand(2, -1, -1)
    torch.testing.assert_close(apply_rope_pairs(x, rope_pairs(table)), apply_rope(x, table), rtol=1e-6, atol=1e-6)
    attention = Attention(config, fused=True)
    with torch.no_grad():
        attention.norm_q.weight.copy_(1 + 0.1 * torch.randn(config.head_dim, generator=gen))
    fused = attention._norm_rope32(attention.norm_q, x, rope_pairs(table))
    torch.testing.assert_close(fused, apply_rope(attention.norm_q(x), table), rtol=1e-6, atol=1e-6)
