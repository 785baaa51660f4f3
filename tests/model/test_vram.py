"""VRAM estimate (real Z-Image sizes): monotonic in size and batch, CFG and reference images cost memory,
and admission runs, adapts (tiled VAE, batch chunks) or refuses with a message naming need, budget and fix."""

from __future__ import annotations

import itertools

import pytest
import torch

from model.errors import OutOfMemoryError
from model.memory.planner import plan_placement
from model.request import GenerationRequest
from model.memory.vram import ModelDims, RequestShape, check_request, estimate_peak
from tests.model.zimage_footprints import GIB, real_dims, real_footprints

MODES = ("full", "balanced", "low")


def _plan(mode: str, budget_gib: float = 15.5):
    return plan_placement(mode, int(budget_gib * GIB), real_footprints(), real_dims())


def _peak(plan, **shape) -> int:
    return estimate_peak(plan, real_footprints(), RequestShape(**shape), real_dims()).total_bytes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tiled", [False, True])
def test_estimate_is_monotonic_in_size(mode, tiled):
    plan = _plan(mode)
    sides = range(256, 2049, 64)
    for width, height in itertools.product(sides, sides):
        here = _peak(plan, width=width, height=height, tiled_vae=tiled)
        if width + 64 <= 2048:
            assert _peak(plan, width=width + 64, height=height, tiled_vae=tiled) >= here
        if height + 64 <= 2048:
            assert _peak(plan, width=width, height=height + 64, tiled_vae=tiled) >= here
    assert _peak(plan, width=2048, height=2048, tiled_vae=tiled) > _peak(plan, width=256, height=256, tiled_vae=tiled)


@pytest.mark.parametrize("mode", MODES)
def test_estimate_grows_strictly_with_batch_cfg_and_reference_image(mode):
    plan = _plan(mode)
    peaks = [_peak(plan, width=1024, height=1024, batch_size=b) for b in range(1, 5)]
    assert peaks == sorted(set(peaks))
    def denoising(**shape) -> int:
        return estimate_peak(plan, real_footprints(), RequestShape(**shape), real_dims()).stages["denoising"]

    assert denoising(width=1024, height=1024, guidance=2.0) > denoising(width=1024, height=1024)
    assert _peak(plan, width=1024, height=1024, guidance=2.0) >= _peak(plan, width=1024, height=1024)
    assert _peak(plan, width=1024, height=1024, text_tokens=512) >= _peak(plan, width=1024, height=1024, text_tokens=64)
    with_reference = estimate_peak(plan, real_footprints(), RequestShape(1024, 1024, reference_image=True), real_dims())
    assert "vae_encode" in with_reference.stages


def test_modes_order_by_memory_and_stages_account_for_weights():
    peaks = {mode: _peak(_plan(mode), width=1024, height=1024, tiled_vae=True) for mode in MODES}
    assert peaks["full"] > peaks["balanced"] > peaks["low"]
    estimate = estimate_peak(_plan("full"), real_footprints(), RequestShape(1024, 1024), real_dims())
    all_weights = sum(f.total_bytes for f in real_footprints().values())
    assert min(estimate.stages.values()) > all_weights  # every stage sees every resident weight


def test_request_shape_from_a_generation_request():
    request = GenerationRequest(prompt="x", width=768, height=1280, batch_size=3, guidance=1.5)
    shape = RequestShape.from_request(request, text_tokens=40)
    assert (shape.width, shape.height, shape.batch_size, shape.uses_cfg, shape.text_tokens) == (768, 1280, 3, True, 40)
    assert RequestShape.from_request(request).text_tokens == request.max_sequence_length


def test_fitting_request_is_admitted_unchanged():
    plan = _plan("full", 80)
    admission = check_request(plan, real_footprints(), RequestShape(1024, 1024), 80 * GIB, real_dims())
    assert admission.ok and not admission.tiled_vae and admission.batch_chunk is None and admission.message == ""


def test_cpu_has_no_budget_and_admits_everything():
    admission = check_request(_plan("full"), real_footprints(), RequestShape(2048, 2048, batch_size=4), None)
    assert admission.ok and admission.available_bytes is None


def test_admission_switches_to_tiled_vae_when_only_that_fits():
    plan = _plan("balanced")
    untiled = _peak(plan, width=1024, height=1024)
    tiled = _peak(plan, width=1024, height=1024, tiled_vae=True)
    assert tiled < untiled
    admission = check_request(plan, real_footprints(), RequestShape(1024, 1024), (tiled + untiled) // 2, real_dims())
    assert admission.ok and admission.tiled_vae and admission.batch_chunk is None
    assert admission.needed_bytes == tiled and "tiles" in admission.message


def test_admission_splits_the_batch_when_the_whole_batch_cannot_fit():
    plan = _plan("balanced")
    two = _peak(plan, width=1024, height=1024, batch_size=2, tiled_vae=True)
    three = _peak(plan, width=1024, height=1024, batch_size=3, tiled_vae=True)
    admission = check_request(plan, real_footprints(), RequestShape(1024, 1024, batch_size=4), (two + three) // 2,
                              real_dims())
    assert admission.ok and admission.tiled_vae and admission.batch_chunk == 2
    assert "chunks of 2" in admission.message


def test_impossible_request_is_refused_with_need_budget_and_fix():
    plan = _plan("balanced")
    available = int(13.5 * GIB)  # below what one 2048x2048 image needs even with guidance 0 and tiled decode
    admission = check_request(plan, real_footprints(), RequestShape(2048, 2048, batch_size=2, guidance=3.0),
                              available, real_dims())
    assert not admission.ok
    needed = f"{admission.needed_bytes / GIB:.1f} GiB"
    message = admission.message
    assert "2048x2048, batch 2, guidance 3" in message and "'balanced'" in message
    assert needed in message and "13.5 GiB is available" in message
    assert "guidance to 0" in message and "one image at a time" in message and "memory mode 'low'" in message
    side = int(message.split("about ")[-1].split("x")[0])
    assert 256 <= side < 2048
    assert _peak(plan, width=side, height=side, tiled_vae=True) <= available  # the advised size really fits
    with pytest.raises(OutOfMemoryError, match="Not enough GPU memory"):
        admission.raise_if_refused()


def test_refusal_when_not_even_the_weights_fit():
    admission = check_request(_plan("low", 4), real_footprints(), RequestShape(512, 512), GIB // 2, real_dims())
    assert not admission.ok and "free GPU memory used by other processes" in admission.message


def test_dims_are_read_from_loaded_modules(tiny_model_dir):
    from model.loading.text_encoder import load_text_encoder
    from model.loading.transformer import load_transformer
    from model.loading.vae import load_vae

    hf = tiny_model_dir / "hf"
    dims = ModelDims.from_components({"transformer": load_transformer(hf / "transformer", dtype=torch.bfloat16),
                                      "text_encoder": load_text_encoder(hf / "text_encoder", dtype=torch.float32),
                                      "vae": load_vae(hf / "vae", dtype=torch.float32)})
    assert (dims.dim, dims.act_bytes, dims.text_hidden, dims.text_act_bytes, dims.vae_act_bytes) == (256, 2, 64, 4, 4)
    assert dims.ffn_dim == int(256 / 3 * 8) and dims.text_intermediate == 128
    assert (dims.vae_full_res_channels, dims.vae_encoder_channels, dims.vae_scale) == (32, 32, 8)
