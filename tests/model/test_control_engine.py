"""Control in the engine on the tiny model: bad inputs, ControlNet inpainting inputs, placement, LoRAs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model import Engine, GenerationRequest, LoraSpec
from model.control import inpaint
from model.control.conditioning import masked_pixels
from model.control.validation import MAX_CONTROL_PIXELS
from model.errors import CheckpointError, InvalidRequestError
from model.images import reference_tensor
from model.memory.fp8 import Float8Linear
from model.memory.placement import RESIDENT, STREAMED, measure_footprint
from model.memory.planner import plan_controlnet, plan_placement
from model.memory.vram import REFERENCE_REQUEST, RequestShape, estimate_peak
from model.network.config import TransformerConfig
from model.network.controlnet import ControlNetLayout, ZImageControlNet
from tests.model.lora_writers import linear_shapes, peft_format, random_lora, write
from tests.model.zimage_footprints import GIB, real_dims, real_footprints

SIZE = dict(width=64, height=48)
BASE = dict(prompt="a cat", seed=4, steps=3, **SIZE)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)


def _controlnet(tiny_model_dir, version: str) -> str:
    return str(tiny_model_dir / "controlnet" / f"tiny-controlnet-union-{version}.safetensors")


def _image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(64, 48)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 8, 48, 40))
    return mask


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def _refused(engine: Engine, field: str, match: str, **fields) -> None:
    with pytest.raises(InvalidRequestError, match=match) as caught:
        engine.generate(GenerationRequest(**{**BASE, **fields}))
    assert caught.value.field == field


def test_mask_of_another_size_than_the_reference_is_refused(engine):
    _refused(engine, "mask", r"mask is 32x32 but reference_image is 64x48", reference_image=_image(0),
             mask=_mask((32, 32)))
    _refused(engine, "mask", "needs a reference_image", mask=_mask())


def test_too_large_control_image_and_mask_are_refused(engine, tiny_model_dir):
    side = math.isqrt(MAX_CONTROL_PIXELS) + 1
    huge = Image.new("1", (side, side))  # 1 bit per pixel: the check reads the size, not the pixels
    _refused(engine, "control_image", "more than the limit", controlnet=_controlnet(tiny_model_dir, "1.0"),
             control_image=huge)
    _refused(engine, "mask", "more than the limit", reference_image=Image.new("RGB", (side, side)), mask=huge)


def test_control_fields_are_checked(engine, tiny_model_dir, tmp_path):
    cn = _controlnet(tiny_model_dir, "1.0")
    _refused(engine, "control_image", "needs a controlnet", control_image=_image(1))
    _refused(engine, "control_mode", "control_mode must be one of map, canny", controlnet=cn,
             control_image=_image(1), control_mode="depth")
    for scale in (-0.1, 2.5, float("nan"), True):
        _refused(engine, "control_scale", "control_scale must be between 0 and 2", controlnet=cn,
                 control_image=_image(1), control_scale=scale)
    _refused(engine, "controlnet", "cannot be read", controlnet=str(tmp_path / "missing.safetensors"),
             control_image=_image(1))
    _refused(engine, "control_image", "1.0 .* needs a control_image", controlnet=cn)
    _refused(engine, "control_image", "needs a control_image or a mask", controlnet=_controlnet(tiny_model_dir, "2.1"))


def test_wrong_channel_count_file_is_a_checkpoint_error_and_the_engine_recovers(engine, tiny_model_dir, tmp_path):
    sd = load_file(_controlnet(tiny_model_dir, "1.0"))
    sd["control_all_x_embedder.2-1.weight"] = torch.zeros(engine.transformer.config.dim, 4 * 17)
    bad = tmp_path / "17-channels.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError, match="17 channels"):
        engine.generate(GenerationRequest(**BASE, controlnet=str(bad), control_image=_image(1)))
    assert "controlnet" not in engine.memory.components
    ok = engine.generate(GenerationRequest(**BASE, controlnet=_controlnet(tiny_model_dir, "1.0"),
                                           control_image=_image(1)))
    assert ok.images[0].size == (64, 48) and "control_encode" in ok.timings


def test_controlnet_inpainting_feeds_mask_and_masked_reference(engine, tiny_model_dir, monkeypatch):
    """2.x channels: zero control latents (no control image), keep-mask 1 - mask, masked reference latents."""
    seen = []
    original = ZImageControlNet.branch
    monkeypatch.setattr(ZImageControlNet, "branch",
                        lambda self, tr, latents, scale, **k: seen.append(latents) or original(self, tr, latents,
                                                                                              scale, **k))
    reference, mask = _image(2), _mask()
    request = GenerationRequest(**BASE, reference_image=reference, mask=mask, strength=1.0,
                                controlnet=_controlnet(tiny_model_dir, "2.1"))
    with_controlnet = _pixels(engine.generate(request))
    context = seen[0]
    assert context.shape == (33, 1, 6, 8)
    repaint = inpaint.latent_mask(inpaint.pixel_mask(mask, 64, 48), 6, 8)[0]
    assert not context[:16].any()
    assert torch.equal(context[16], 1 - repaint)
    with torch.no_grad():
        expected = engine._encode_pixels(masked_pixels(reference_tensor(reference, 64, 48),
                                                       inpaint.pixel_mask(mask, 64, 48)))[0]
    assert torch.allclose(context[17:, 0], expected)
    plain = _pixels(engine.generate(GenerationRequest(**BASE, reference_image=reference, mask=mask, strength=1.0)))
    assert np.abs(with_controlnet - plain).mean() > 1.0


def test_inpainting_keeps_the_reference_latents_outside_the_mask(engine, monkeypatch):
    """The final latents outside the mask are exactly the reference's, whatever the seed."""
    decoded = []
    original = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda latents, *a: decoded.append(latents) or original(latents, *a))
    reference, mask = _image(3), _mask()
    for seed in (1, 2):
        engine.generate(GenerationRequest(**{**BASE, "seed": seed}, reference_image=reference, mask=mask,
                                          strength=1.0))
    with torch.no_grad():
        clean = engine._encode_reference(reference, 64, 48)
    keep = inpaint.latent_mask(inpaint.pixel_mask(mask, 64, 48), 6, 8) == 0
    for latents in decoded:
        assert torch.equal(latents[keep.expand_as(latents)], clean[keep.expand_as(clean)])
    assert (decoded[0] - decoded[1])[~keep.expand_as(decoded[0])].abs().mean() > 0.1


def test_inpainting_a_batch_gives_each_seed_its_own_image(engine):
    """The blend re-noises the reference with each image's own noise (seed + i), also in batch chunks."""
    fields = dict(reference_image=_image(3), mask=_mask(), strength=0.7)
    batch = engine.generate(GenerationRequest(**{**BASE, "seed": 8, "batch_size": 2}, **fields))
    alone = engine.generate(GenerationRequest(**{**BASE, "seed": 9}, **fields))
    assert np.abs(np.asarray(batch.images[1], dtype=np.int16) - _pixels(alone)).max() <= 1
    assert np.abs(np.asarray(batch.images[0], dtype=np.int16) - _pixels(alone)).mean() > 1.0


def test_loras_still_work_with_a_controlnet(engine, tiny_model_dir, tmp_path):
    shapes = linear_shapes(engine.transformer)
    tensors, metadata = peft_format(random_lora(shapes, 4, seed=41), alpha=4.0)
    lora = LoraSpec(str(write(tmp_path / "lora.safetensors", tensors, metadata)), 1.0, "l")
    control = dict(controlnet=_controlnet(tiny_model_dir, "2.1"), control_image=_image(5), control_mode="canny")
    alone = _pixels(engine.generate(GenerationRequest(**BASE, **control)))
    with_lora = _pixels(engine.generate(GenerationRequest(**BASE, **control, loras=(lora,))))
    again = _pixels(engine.generate(GenerationRequest(**BASE, **control)))
    assert np.abs(with_lora - alone).mean() > 1.0
    assert np.array_equal(again, alone)  # the LoRA came off; the ControlNet stayed


def _real_controlnet_footprint(label: str):
    layers = {"2.1": 15, "2.1-lite": 3}[label]
    layout = ControlNetLayout("2.1", 33, layers, 2, tuple(range(0, 2 * layers, 2)), (0, 1))
    with torch.device("meta"):
        return measure_footprint(ZImageControlNet(TransformerConfig(), layout).to(torch.bfloat16), quantizable=True)


@pytest.mark.parametrize("mode, budget_gib, residency, fp8", [
    ("full", None, RESIDENT, False), ("balanced", 40, RESIDENT, False), ("balanced", 15.5, STREAMED, False),
    ("low", 40, STREAMED, True)])
def test_controlnet_placement_per_memory_mode(mode, budget_gib, residency, fp8):
    budget = None if budget_gib is None else int(budget_gib * GIB)
    footprints = {**real_footprints(), "controlnet": _real_controlnet_footprint("2.1")}
    plan = plan_controlnet(plan_placement(mode, budget, real_footprints(), real_dims()), footprints, real_dims())
    assert (plan.component("controlnet").residency, plan.component("controlnet").fp8) == (residency, fp8)
    assert {k: v for k, v in plan.components.items() if k != "controlnet"} == \
        plan_placement(mode, budget, real_footprints(), real_dims()).components  # the rest is unchanged


def test_vram_estimate_counts_the_controlnet_and_its_hints():
    footprints = {**real_footprints(), "controlnet": _real_controlnet_footprint("2.1")}
    base = plan_placement("full", None, real_footprints(), real_dims())
    plan = plan_controlnet(base, footprints, real_dims())
    without = estimate_peak(base, real_footprints(), REFERENCE_REQUEST, real_dims()).stages["denoising"]
    shape = RequestShape(width=1024, height=1024, tiled_vae=True, control_hints=15)
    with_cn = estimate_peak(plan, footprints, shape, real_dims()).stages["denoising"]
    hints = 15 * (4096 + 512) * 3840 * 2
    assert with_cn - without == footprints["controlnet"].total_bytes + hints
    streamed = plan_controlnet(plan_placement("low", int(40 * GIB), real_footprints(), real_dims()), footprints,
                               real_dims())
    fp, stored = footprints["controlnet"], footprints["controlnet"].scaled(True)  # low mode: fp8 blocks
    in_use = streamed.component("controlnet").device_bytes_in_use(fp)
    assert in_use == stored.rest_bytes + 2 * stored.largest_block_bytes
    # A little over half the bytes streamed at every step (adaLN and the hint projections stay bf16).
    assert stored.block_bytes < 0.6 * fp.block_bytes
    print(f"\n2.1 ControlNet: {fp.total_bytes / GIB:.2f} GiB bf16 ({stored.total_bytes / GIB:.2f} GiB with fp8 "
          f"blocks), hints at 1024x1024 {hints / GIB:.2f} GiB")


def test_a_new_controlnet_file_replaces_the_one_in_memory(engine, tiny_model_dir):
    engine.generate(GenerationRequest(**BASE, controlnet=_controlnet(tiny_model_dir, "1.0"), control_image=_image(6)))
    first = engine.memory.components["controlnet"]
    engine.generate(GenerationRequest(**BASE, controlnet=_controlnet(tiny_model_dir, "2.1-lite"),
                                      control_image=_image(6)))
    second = engine.memory.components["controlnet"]
    assert second is not first and second.layout.n_layers == 1
    assert set(engine.memory.footprints) == {"text_encoder", "transformer", "vae", "controlnet"}
    assert engine.memory.plan.component("controlnet").residency == RESIDENT  # CPU: unbounded budget
    info = engine.describe()["controlnet"]
    assert info["path"].endswith("tiny-controlnet-union-2.1-lite.safetensors") and info["inpainting"]
    assert info["version"] == "2.1 (1 control layer)" and info["residency"] == RESIDENT


def test_low_mode_streams_the_controlnet_with_fp8_projections_and_stays_close(tiny_model_dir):
    control = dict(controlnet=_controlnet(tiny_model_dir, "2.1"), control_image=_image(7), control_mode="canny")
    images = {}
    for mode in ("full", "low"):
        engine = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32, memory_mode=mode)
        images[mode] = _pixels(engine.generate(GenerationRequest(**BASE, **control))).astype(np.float64)
        net = engine.memory.components["controlnet"]
        block = net.control_layers[0]
        assert isinstance(block.attention.to_q, Float8Linear) == (mode == "low")
        assert isinstance(block.feed_forward.w2, Float8Linear) == (mode == "low")
        assert type(block.after_proj) is torch.nn.Linear  # the hint projections keep their precision
        assert engine.memory.plan.component("controlnet").residency == (STREAMED if mode == "low" else RESIDENT)
    assert not np.array_equal(images["low"], images["full"])  # the fp8 weights were really used
    # The same picture (the fp8 transformer of low mode is bounded per layer in test_fp8): pixel correlation.
    correlation = np.corrcoef(images["low"].ravel(), images["full"].ravel())[0, 1]
    print(f"\nlow vs full with a 2.1 ControlNet: correlation {correlation:.4f}, "
          f"mean |diff| {np.abs(images['low'] - images['full']).mean():.2f}")
    assert correlation > 0.9, f"correlation {correlation:.3f}"
