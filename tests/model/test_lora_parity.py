"""LoRA parity with diffusers + PEFT: the same files, one and two stacked, give the same outputs (fp32)."""

from __future__ import annotations

import copy

import diffusers  # the test oracle; product code never imports it
import pytest
import torch

from model.loading.transformer import load_transformer
from model.lora.manager import LoraManager
from model.request import LoraSpec
from tests.model.lora_writers import (kohya_format, linear_shapes, peft_format, random_lora,
                                      well_conditioned_state_dict, write)
from tests.model.tiny_transformer import tiny_config, tiny_inputs, write_hf_transformer

RTOL, ATOL = 1e-4, 1e-5
CASES = {  # name: ((LoRA file, strength), ...)
    "one_lora": (("a", 0.8),),
    "two_stacked": (("a", 0.8), ("b", -1.3)),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One tiny checkpoint loaded by our loader and by diffusers, plus two LoRA files:
    `a` (PEFT naming, alpha in the diffusers metadata) on every Linear, `b` (kohya naming with
    .alpha keys, so diffusers' own converter reads it) on attention and feed-forward only."""
    root = tmp_path_factory.mktemp("lora-parity")
    config = tiny_config()
    folder = write_hf_transformer(root / "transformer", config, well_conditioned_state_dict(config))
    ours = load_transformer(folder, dtype=torch.float32)
    reference = diffusers.ZImageTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    shapes = linear_shapes(ours)
    tensors, metadata = peft_format(random_lora(shapes, 4, seed=21), alpha=8.0)
    paths = {"a": write(root / "a.safetensors", tensors, metadata),
             "b": write(root / "b.safetensors",
                        kohya_format(random_lora(shapes, 2, seed=22, targets="attention|feed_forward"), 1.0))}
    return ours, reference, config, paths


def _reference_with_loras(reference, paths, case):
    """diffusers' own path: ZImagePipeline.load_lora_weights per file, then set_adapters(weights)."""
    pipe = diffusers.ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                    transformer=copy.deepcopy(reference))
    names = [name for name, _ in case]
    for name in names:
        pipe.load_lora_weights(str(paths[name]), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[strength for _, strength in case])
    return pipe.transformer


@pytest.fixture(scope="module")
def reference_outputs(setup):
    """diffusers' base output and its output with each case's LoRAs (computed once per module)."""
    _, reference, config, paths = setup
    latents, captions = tiny_inputs(config, [(8, 8)], [7])
    inputs = (latents, torch.tensor([0.4]), captions)
    outputs = {"base": _forward(reference, inputs, return_dict=False)}
    for case, loras in CASES.items():
        outputs[case] = _forward(_reference_with_loras(reference, paths, loras), inputs, return_dict=False)
    return inputs, outputs


def _forward(model, inputs, **kwargs) -> torch.Tensor:
    """The single sample's output (diffusers returns a tuple holding the list, ours the list)."""
    latents, t, captions = inputs
    with torch.no_grad():  # diffusers may modify its list arguments; hand it copies
        out = model([x.clone() for x in latents], t, [c.clone() for c in captions], **kwargs)
    return (out[0] if kwargs.get("return_dict") is False else out)[0]


@pytest.mark.parametrize("runtime_only", [False, True], ids=["merged", "runtime"])
@pytest.mark.parametrize("case", list(CASES))
def test_lora_output_matches_diffusers_peft(setup, reference_outputs, case, runtime_only):
    ours, _, _, paths = setup
    inputs, outputs = reference_outputs
    base, expected = outputs["base"], outputs[case]

    model = copy.deepcopy(ours)
    LoraManager(model, runtime_only=runtime_only).activate(
        tuple(LoraSpec(str(paths[name]), strength) for name, strength in CASES[case]))
    out = _forward(model, inputs)

    change = (expected - base).abs().max().item()
    diff = (out - expected).abs().max().item()
    print(f"\n[lora parity] {case} ({'runtime' if runtime_only else 'merged'}): LoRA moves the output by "
          f"{change:.3g} (max abs); ours vs diffusers max abs diff {diff:.3g} (rtol {RTOL}, atol {ATOL})")
    assert change > 0.5  # the LoRA visibly matters, so agreement is not the base model agreeing
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)
