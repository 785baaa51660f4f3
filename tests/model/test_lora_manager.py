"""LoraManager: exact restore, switching sets, fp8 runtime path, and refusal of bad LoRA files."""

from __future__ import annotations

import copy

import pytest
import torch

from model.memory.fp8 import Float8Linear, quantize_linears_fp8
from model.lora.manager import LoraError, LoraManager
from model.request import LoraSpec
from model.network.transformer import ZImageTransformer
from tests.model.lora_writers import (kohya_format, linear_shapes, peft_format, random_lora,
                                      well_conditioned_state_dict, write)
from tests.model.tiny_transformer import tiny_config, tiny_inputs


def _model(dtype: torch.dtype, **overrides) -> ZImageTransformer:
    config = tiny_config(**overrides)
    model = ZImageTransformer(config)
    model.load_state_dict(well_conditioned_state_dict(config))
    return model.to(dtype).eval()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], snapshot[k]) for k in state)


def _run(model: ZImageTransformer) -> torch.Tensor:
    latents, captions = tiny_inputs(model.config, [(8, 8)], [7])
    with torch.no_grad():
        return model([x.to(model.dtype) for x in latents], torch.tensor([0.4]),
                     [c.to(model.dtype) for c in captions])[0].float()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two LoRA files for the tiny model: `a` on everything (PEFT), `b` on attention/FFN (kohya)."""
    folder = tmp_path_factory.mktemp("loras")
    shapes = linear_shapes(_model(torch.float32))
    tensors, metadata = peft_format(random_lora(shapes, 4, seed=11), alpha=8.0)
    a = write(folder / "a.safetensors", tensors, metadata)
    b_pairs = random_lora(shapes, 2, seed=12, targets="attention|feed_forward")
    b = write(folder / "b.safetensors", kohya_format(b_pairs, 1.0))
    return {"a": a, "b": b, "folder": folder}


def test_clear_restores_bf16_weights_bit_for_bit(files):
    model = _model(torch.bfloat16)
    base = _snapshot(model)
    manager = LoraManager(model)
    manager.activate((LoraSpec(str(files["a"]), 0.9), LoraSpec(str(files["b"]), -1.5)))
    assert not _same(model, base)
    manager.clear()
    assert _same(model, base)


def test_switching_sets_gives_each_set_its_own_weights(files):
    a, b = LoraSpec(str(files["a"]), 0.8, "a"), LoraSpec(str(files["b"]), 1.2, "b")
    model = _model(torch.bfloat16)
    base = _snapshot(model)
    manager = LoraManager(model)
    expected = {}
    for specs in ((a,), (b,), (a, b)):
        fresh = copy.deepcopy(model)
        LoraManager(fresh).activate(specs)
        expected[specs] = _snapshot(fresh)
    for specs in ((a,), (b,), (a, b), (a,), (), (b,), (b,)):
        reports = manager.activate(specs)
        assert _same(model, expected[specs] if specs else base), [s.name for s in specs]
        assert [r.name for r in reports] == [s.name for s in specs]
    assert manager.activate((b,)) == manager.reports  # same set again: nothing recomputed
    manager.clear()
    assert _same(model, base)


def test_report_names_hash_and_counts(files):
    import hashlib

    manager = LoraManager(_model(torch.float32))
    (report,) = manager.activate((LoraSpec(str(files["b"]), 0.5, "style-b"),))
    assert report.name == "style-b" and report.scale == 0.5
    assert report.sha256 == hashlib.sha256(files["b"].read_bytes()).hexdigest()
    assert report.matched_keys == 3 * report.modules and report.unmatched_keys == ()


def test_runtime_path_matches_merged_weights(files):
    specs = (LoraSpec(str(files["a"]), 0.8), LoraSpec(str(files["b"]), -1.1))
    model = _model(torch.float32)
    base_out = _run(model)
    merged_model, runtime_model = copy.deepcopy(model), copy.deepcopy(model)
    LoraManager(merged_model).activate(specs)
    runtime = LoraManager(runtime_model, runtime_only=True)
    runtime.activate(specs)
    merged_out, runtime_out = _run(merged_model), _run(runtime_model)
    diff = (merged_out - runtime_out).abs().max().item()
    print(f"\n[lora runtime] LoRA moves output by {(merged_out - base_out).abs().max().item():.3g}; "
          f"merged vs runtime max abs diff {diff:.3g} (rtol 1e-4, atol 1e-5)")
    assert _same(runtime_model, model.state_dict())  # runtime path leaves weights alone
    torch.testing.assert_close(runtime_out, merged_out, rtol=1e-4, atol=1e-5)
    runtime.clear()
    assert torch.equal(_run(runtime_model), base_out)


def _dequantized_copy(model: ZImageTransformer) -> ZImageTransformer:
    """`model` with every Float8Linear turned back into an nn.Linear holding fp8 value * row scale."""
    plain = copy.deepcopy(model)
    for name, layer in list(plain.named_modules()):
        if isinstance(layer, Float8Linear):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(layer.weight.float() * layer.weight_scale[:, None])
                if layer.bias is not None:
                    linear.bias.copy_(layer.bias)
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent), attr, linear)
    return plain


def test_fp8_layers_get_the_runtime_path_with_merged_accuracy(files):
    specs = (LoraSpec(str(files["a"]), 0.8), LoraSpec(str(files["b"]), -1.1))
    model = _model(torch.float32)
    assert quantize_linears_fp8(model) > 0
    base, base_out = _snapshot(model), _run(model)
    reference = _dequantized_copy(model)
    LoraManager(reference).activate(specs)
    manager = LoraManager(model)
    manager.activate(specs)
    fp8_layers = [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]
    state = model.state_dict()
    assert all(torch.equal(state[k], base[k]) for k in state if k.rpartition(".")[0] in fp8_layers)
    out, expected = _run(model), _run(reference)
    print(f"\n[lora fp8] LoRA moves the fp8 output by {(out - base_out).abs().max().item():.3g}; runtime path "
          f"vs merged into dequantized weights max abs diff {(out - expected).abs().max().item():.3g}")
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    manager.clear()
    assert _same(model, base)
    assert torch.equal(_run(model), base_out)


def _bad_files(folder, good_tensors) -> dict[str, tuple[object, str]]:
    """name -> (path, a phrase the refusal must contain)."""
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
    big = linear_shapes(_model(torch.float32, dim=384, n_heads=3, n_kv_heads=3))
    incomplete = {k: v for k, v in good_tensors.items() if not k.endswith("layers_0_attention_to_q.lora_up.weight")}
    dora = {**good_tensors, "lora_unet_layers_0_attention_to_q.dora_scale": torch.ones(1, 256)}
    twice = {k.replace("lora_unet_layers_0_attention_to_q", "transformer.layers.0.attention.to_q"): v
             for k, v in good_tensors.items() if "lora_unet_layers_0_attention_to_q." in k}
    (folder / "model.ckpt").write_bytes(b"\x80\x04 pickle")
    (folder / "garbage.safetensors").write_bytes(b"this is not a safetensors file at all")
    return {
        "sdxl": (write(folder / "sdxl.safetensors", sdxl), "Stable Diffusion / SDXL"),
        "wrong_shapes": (write(folder / "big.safetensors", kohya_format(random_lora(big, 4, 1), 4.0)),
                         "shapes do not fit"),
        "no_match": (write(folder / "nothing.safetensors", {"foo.bar": torch.zeros(2)}), "none of its 1 tensors"),
        "empty": (write(folder / "empty.safetensors", {}), "the file is empty"),
        "pickle": (folder / "model.ckpt", "only .safetensors"),
        "garbage": (folder / "garbage.safetensors", "not a readable safetensors file"),
        "missing": (folder / "absent.safetensors", "cannot be opened"),
        "incomplete": (write(folder / "incomplete.safetensors", incomplete), "come in pairs"),
        "dora": (write(folder / "dora.safetensors", dora), "DoRA"),
        "named_twice": (write(folder / "twice.safetensors", {**good_tensors, **twice}), "twice"),
    }


def test_bad_files_are_refused_and_the_active_set_stays(files, tmp_path):
    model = _model(torch.bfloat16)
    good = LoraSpec(str(files["b"]), 0.7, "b")
    manager = LoraManager(model)
    manager.activate((good,))
    with_good = _snapshot(model)
    shapes = linear_shapes(model)
    good_tensors = kohya_format(random_lora(shapes, 4, 3), 4.0)
    for name, (path, phrase) in _bad_files(tmp_path, good_tensors).items():
        for specs in ((LoraSpec(str(path), 1.0),), (LoraSpec(str(files["a"]), 1.0), LoraSpec(str(path), 1.0))):
            with pytest.raises(LoraError) as refused:
                manager.activate(specs)
            print(f"\n[lora refusal] {name}: {refused.value}")
            assert phrase in str(refused.value), name
            assert refused.value.code == "lora" and refused.value.field == "loras"
            assert _same(model, with_good), name
            assert [r.name for r in manager.reports] == ["b"]
    with pytest.raises(LoraError, match="not a finite number"):
        manager.activate((LoraSpec(str(files["a"]), float("nan")),))
    manager.clear()
    assert manager.reports == []
