"""Memory modes: the placement plan for given VRAM budgets (real Z-Image sizes), and the manager moving
components as the plan says (the meta device stands in for the GPU: a tensor there is 'on the device')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.memory.fp8 import Float8Linear
from model.memory.manager import MemoryManager
from model.memory.placement import ON_DEMAND, RESIDENT, STREAMED, measure_footprint
from model.memory.planner import plan_placement
from model.memory.vram import REFERENCE_REQUEST, estimate_peak
from tests.model.zimage_footprints import GIB, real_dims, real_footprints


def _plan(mode: str, budget_gib: float | None):
    budget = None if budget_gib is None else int(budget_gib * GIB)
    return plan_placement(mode, budget, real_footprints(), real_dims())


def _layout(plan) -> dict[str, tuple[str, bool]]:
    return {name: (c.residency, c.fp8) for name, c in plan.components.items()}


def test_real_footprints_match_the_published_sizes():
    fp = real_footprints()
    assert fp["transformer"].total_bytes == 2 * 6_154_908_736
    assert fp["transformer"].largest_block_bytes == 2 * 180_910_336
    # fp8 halves the 34 blocks' 7 projections (176,947,200 parameters each) and adds fp32 row scales.
    projections, rows = 34 * 176_947_200, 34 * (4 * 3840 + 2 * 10240 + 3840)
    assert fp["transformer"].fp8_total_bytes == 2 * 6_154_908_736 - projections + 4 * rows
    assert fp["text_encoder"].largest_block_bytes == 2 * (2560 * (4096 + 2 * 1024) + 4096 * 2560
                                                          + 3 * 2560 * 9728 + 2 * 128 + 2 * 2560)


def test_full_keeps_everything_resident_whatever_the_budget():
    for budget in (None, 8, 80):
        assert _layout(_plan("full", budget)) == {"text_encoder": (RESIDENT, False),
                                                  "transformer": (RESIDENT, False), "vae": (RESIDENT, False)}


def test_balanced_streams_the_text_encoder_on_a_16gb_card_and_fits_15_gib():
    plan = _plan("balanced", 15.5)  # what a 16 GB card leaves free after the CUDA context
    assert _layout(plan) == {"text_encoder": (STREAMED, False), "transformer": (RESIDENT, False),
                             "vae": (RESIDENT, False)}
    assert estimate_peak(plan, real_footprints(), REFERENCE_REQUEST, real_dims()).total_bytes <= 15 * GIB


def test_balanced_moves_the_whole_text_encoder_when_it_fits_beside_the_transformer():
    assert _layout(_plan("balanced", 40)) == {"text_encoder": (ON_DEMAND, False),
                                              "transformer": (RESIDENT, False), "vae": (RESIDENT, False)}
    assert _layout(_plan("balanced", None))["text_encoder"] == (ON_DEMAND, False)


def test_low_stores_the_transformer_in_fp8_and_fits_11_gib_at_896():
    plan = _plan("low", 11.5)  # a 12 GB card
    assert _layout(plan) == {"text_encoder": (STREAMED, False), "transformer": (RESIDENT, True),
                             "vae": (RESIDENT, False)}
    shape = REFERENCE_REQUEST.__class__(width=896, height=896, tiled_vae=True)
    assert estimate_peak(plan, real_footprints(), shape, real_dims()).total_bytes <= 11 * GIB


def test_low_streams_the_fp8_transformer_when_even_that_does_not_fit():
    assert _layout(_plan("low", 6))["transformer"] == (STREAMED, True)


@pytest.mark.parametrize("budget_gib, expected", [(None, "full"), (80, "full"), (23, "full"), (15.5, "balanced"),
                                                  (11.5, "low"), (4, "low")])
def test_auto_picks_the_roomiest_mode_that_fits(budget_gib, expected):
    plan = _plan("auto", budget_gib)
    assert plan.mode == expected and plan.requested_mode == "auto"


def test_unknown_mode_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="full, balanced, low, auto"):
        _plan("turbo", 16)


# ------------------------------------------------------------------ the manager executing plans


class Block(nn.Module):
    """One repeated block with a transformer-like projection name (`attention.to_q`)."""

    def __init__(self, width: int):
        super().__init__()
        self.attention = nn.ModuleDict({"to_q": nn.Linear(width, width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention.to_q(x)


class TinyModel(nn.Module):
    """An embedding, a list of repeated blocks and a head: the shape of every engine component."""

    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        self.embed = nn.Linear(width, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _devices(module: nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def _components():
    return {"text_encoder": TinyModel(), "transformer": TinyModel(), "vae": TinyModel()}


def test_full_mode_moves_everything_to_the_device_once():
    components = _components()
    manager = MemoryManager("full", "meta", components, budget_bytes=2**40)
    assert all(_devices(m) == {"meta"} for m in components.values())
    with manager.use("text_encoder") as text_encoder:
        assert text_encoder is components["text_encoder"] and _devices(text_encoder) == {"meta"}


def test_on_demand_component_is_on_the_device_only_inside_use():
    components = _components()
    manager = MemoryManager("balanced", "meta", components, budget_bytes=2**40)
    assert manager.plan.component("text_encoder").residency == ON_DEMAND
    assert _devices(components["text_encoder"]) == {"cpu"}
    assert _devices(components["transformer"]) == {"meta"}
    with manager.use("text_encoder") as text_encoder:
        assert _devices(text_encoder) == {"meta"}
    assert _devices(components["text_encoder"]) == {"cpu"}


def test_streamed_component_has_one_block_plus_the_prefetched_next_on_the_device():
    components = _components()
    manager = MemoryManager("balanced", "meta", components, budget_bytes=1)
    text_encoder = components["text_encoder"]
    assert manager.plan.component("text_encoder").residency == STREAMED
    on_device_per_block = []
    for layer in text_encoder.layers:
        layer.register_forward_pre_hook(lambda *_: on_device_per_block.append(
            [_devices(b) == {"meta"} for b in text_encoder.layers]))
    with manager.use("text_encoder"):
        assert _devices(text_encoder.embed) == {"meta"} and _devices(text_encoder.layers) == {"cpu"}
        out = text_encoder(torch.randn(2, 8, device="meta"))
    assert out.device.type == "meta"
    assert on_device_per_block == [[True, True, False], [False, True, True], [False, False, True]]
    assert _devices(text_encoder) == {"cpu"}


def test_streaming_on_the_cpu_gives_the_same_output():
    model = TinyModel()
    x = torch.randn(2, 8)
    expected = model(x)
    manager = MemoryManager("balanced", "cpu", {"text_encoder": model}, budget_bytes=1)
    with manager.use("text_encoder"), torch.inference_mode():
        assert torch.equal(model(x), expected)
    with manager.use("text_encoder"), torch.inference_mode():  # a second pass reuses the learned order
        assert torch.equal(model(x), expected)


def test_low_mode_quantizes_the_transformer_and_keeps_it_resident_when_it_fits():
    components = {"text_encoder": TinyModel(), "transformer": TinyModel(width=32), "vae": TinyModel()}
    before = measure_footprint(components["transformer"], quantizable=True)
    manager = MemoryManager("low", "meta", components, budget_bytes=2**40)
    assert measure_footprint(components["transformer"]).total_bytes == before.fp8_total_bytes < before.total_bytes
    assert manager.plan.component("transformer").fp8 and manager.plan.component("transformer").residency == RESIDENT
    assert isinstance(components["transformer"].layers[0].attention.to_q, Float8Linear)
    assert isinstance(components["transformer"].embed, nn.Linear)  # only block projections are quantized
    assert _devices(components["transformer"]) == {"meta"}
    assert _devices(components["text_encoder"]) == {"cpu"}  # streamed: on the CPU between uses


def test_streamed_transformer_keeps_its_non_block_part_resident():
    components = {"text_encoder": TinyModel(), "transformer": TinyModel(), "vae": TinyModel()}
    manager = MemoryManager("low", "meta", components, budget_bytes=1)
    transformer = components["transformer"]
    assert manager.plan.component("transformer").residency == STREAMED
    assert _devices(transformer.embed) == {"meta"} and _devices(transformer.layers) == {"cpu"}
    with manager.use("transformer"):
        transformer(torch.randn(1, 8, device="meta"))
    assert _devices(transformer.embed) == {"meta"} and _devices(transformer.layers) == {"cpu"}


# ------------------------------------------------------------------ the engine in every mode (tiny model, CPU)


@pytest.fixture(scope="module")
def engine_images(tiny_model_dir):
    from model.engine import Engine
    from model.request import GenerationRequest

    request = GenerationRequest(prompt="a cat on a red sofa", width=64, height=64, steps=2, seed=3)
    images = {}
    for mode in ("full", "balanced", "low", "auto"):
        engine = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32, memory_mode=mode)
        images[mode] = (engine.memory.plan, torch.tensor(list(engine.generate(request).images[0].getdata())))
    return images


def test_engine_runs_in_every_mode_and_offloading_changes_nothing(engine_images):
    plans = {mode: plan for mode, (plan, _) in engine_images.items()}
    assert plans["balanced"].component("text_encoder").residency == ON_DEMAND  # CPU: no budget, roomy variant
    assert plans["auto"].mode == "full"
    full, balanced = engine_images["full"][1], engine_images["balanced"][1]
    assert torch.equal(full, balanced)


def test_engine_in_low_mode_uses_fp8_and_stays_close(engine_images):
    plan, low = engine_images["low"]
    assert plan.component("transformer").fp8
    full = engine_images["full"][1].float().flatten()
    low = low.float().flatten()
    assert not torch.equal(low, full)  # the fp8 weights were really used
    # The tiny model's sharp attention amplifies any weight error (test_fp8 bounds it per layer), but the
    # picture must stay the same picture: pixel correlation with the full-precision image.
    correlation = torch.corrcoef(torch.stack([low, full]))[0, 1]
    assert correlation > 0.9, f"correlation {correlation:.3f}"


def test_admission_uses_the_configured_budget_cap():
    from model.request import GenerationRequest

    components = _components()
    unbounded = MemoryManager("full", "cpu", _components())
    assert unbounded.admit(GenerationRequest(prompt="x")).ok  # the CPU has no device budget
    capped = MemoryManager("full", "cpu", components, budget_bytes=2**20)
    admission = capped.admit(GenerationRequest(prompt="x", width=512, height=512), text_tokens=20)
    assert not admission.ok and admission.available_bytes == 2**20
    assert "Not enough GPU memory for 512x512, batch 1" in admission.message
