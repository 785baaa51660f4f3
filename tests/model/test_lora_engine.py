"""LoRAs through Engine.generate on the tiny model: each request gets exactly its own LoRA set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import Engine, GenerationRequest, LoraSpec
from model.errors import InvalidRequestError
from model.lora.manager import LoraError
from tests.model.lora_writers import comfy_format, linear_shapes, peft_format, random_lora, write

REQUEST = dict(prompt="a lighthouse 灯塔", seed=3, width=64, height=48, steps=3)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def loras(engine, tmp_path_factory) -> dict[str, LoraSpec]:
    """`a`: PEFT names on every Linear; `b`: ComfyUI names (fused qkv) on the attention layers."""
    folder = tmp_path_factory.mktemp("engine-loras")
    shapes = linear_shapes(engine.transformer)
    tensors, metadata = peft_format(random_lora(shapes, 4, seed=31), alpha=4.0)
    a = write(folder / "a.safetensors", tensors, metadata)
    b = write(folder / "b.safetensors", comfy_format(random_lora(shapes, 4, seed=32, targets="attention"), 8.0))
    return {"a": LoraSpec(str(a), 1.0, "a"), "b": LoraSpec(str(b), 1.5, "b"),
            "b_neg": LoraSpec(str(b), -0.5, "b")}


def _image(engine: Engine, *specs: LoraSpec) -> np.ndarray:
    result = engine.generate(GenerationRequest(**REQUEST, loras=specs))
    return np.asarray(result.images[0], dtype=np.int16)


def test_switching_lora_sets_between_requests(engine, loras):
    base_weights = {k: v.clone() for k, v in engine.transformer.state_dict().items()}
    a, b, b_neg = loras["a"], loras["b"], loras["b_neg"]
    first = {"none": _image(engine), "a": _image(engine, a), "b": _image(engine, b),
             "a+b_neg": _image(engine, a, b_neg)}
    for name in ("a", "b", "a+b_neg"):
        moved = np.abs(first[name] - first["none"]).mean()
        print(f"\n[lora engine] LoRA set {name} moves the image by {moved:.2f} levels (mean)")
        assert moved > 1.0, name
    assert np.abs(first["a"] - first["b"]).mean() > 1.0

    # The same sets again, in another order: every request gets the image of its own set.
    for name, specs in (("b", (b,)), ("none", ()), ("a+b_neg", (a, b_neg)), ("a", (a,)), ("a", (a,))):
        assert np.array_equal(_image(engine, *specs), first[name]), name
    engine.generate(GenerationRequest(**REQUEST))
    state = engine.transformer.state_dict()
    assert all(torch.equal(state[k], base_weights[k]) for k in base_weights)


def test_bad_lora_is_refused_and_the_next_request_is_served(engine, loras, tmp_path):
    bad = write(tmp_path / "sdxl.safetensors",
                {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                 "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    expected = _image(engine, loras["a"])
    with pytest.raises(LoraError) as refused:
        engine.generate(GenerationRequest(**REQUEST, loras=(loras["a"], LoraSpec(str(bad), 1.0, "sdxl"))))
    assert isinstance(refused.value, InvalidRequestError) and refused.value.field == "loras"
    assert "Stable Diffusion" in str(refused.value)
    assert np.array_equal(_image(engine, loras["a"]), expected)



def test_low_memory_mode_applies_and_removes_loras_on_fp8_layers(tiny_model_dir, loras):
    """In `low` mode the block projections are fp8 (model.memory.fp8) and get the runtime path; the
    numbers of that path are checked in test_lora_manager against merged dequantized weights."""
    low = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32, memory_mode="low")
    fp8_weights = {k: v.clone() for k, v in low.transformer.state_dict().items()}
    none, with_a, with_b = _image(low), _image(low, loras["a"]), _image(low, loras["b"])
    for name, image in (("a", with_a), ("b", with_b)):
        moved = np.abs(image - none).mean()
        print(f"\n[lora engine low] LoRA {name} moves the fp8 image by {moved:.2f} levels (mean)")
        assert moved > 1.0
    assert np.array_equal(_image(low, loras["a"]), with_a)
    assert np.array_equal(_image(low), none)
    state = low.transformer.state_dict()
    assert all(torch.equal(state[k], fp8_weights[k]) for k in fp8_weights)
