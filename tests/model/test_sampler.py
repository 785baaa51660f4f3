"""Sampler: sigma schedule, call counts, CFG semantics, img2img start, seeded noise, cancellation."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from model import sampler
from model.errors import GenerationCancelled


class RecordingVelocity:
    """Fake transformer: records every call; returns a simple function of x, t and the sample's half."""

    def __init__(self):
        self.calls: list[tuple[int, bool, list[float]]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
        self.calls.append((x.shape[0], guided, t.tolist()))
        out = 0.5 * x + t.view(-1, 1, 1, 1)
        if guided:  # negatives predict something else, so CFG changes the result
            out[x.shape[0] // 2:] = -out[x.shape[0] // 2:]
        return out


def test_eight_step_schedule_matches_reference_table():
    expected = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
    assert sampler.shifted_sigmas(8, 3.0).tolist() == pytest.approx(expected, abs=1e-6)


def test_schedule_equals_diffusers_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    for steps in (1, 4, 8, 13):
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist())
        assert torch.equal(sampler.shifted_sigmas(steps, 3.0), scheduler.sigmas)


def test_eight_steps_are_eight_calls_with_model_time_one_minus_sigma():
    velocity = RecordingVelocity()
    sigmas = sampler.shifted_sigmas(8)
    sampler.denoise(velocity, torch.zeros(1, 16, 4, 4), sigmas)
    assert [batch for batch, _, _ in velocity.calls] == [1] * 8
    assert [t[0] for _, _, t in velocity.calls] == pytest.approx((1 - sigmas[:-1]).tolist(), abs=1e-6)


def test_guidance_is_one_batched_call_per_step():
    velocity = RecordingVelocity()
    sampler.denoise(velocity, torch.zeros(2, 16, 4, 4), sampler.shifted_sigmas(8), guidance=4.0)
    assert [(batch, guided) for batch, guided, _ in velocity.calls] == [(4, True)] * 8


def test_cfg_truncation_turns_guidance_off_late_steps():
    velocity = RecordingVelocity()
    sampler.denoise(velocity, torch.zeros(1, 16, 4, 4), sampler.shifted_sigmas(8), guidance=4.0,
                    cfg_truncation=0.3)
    # t = 1 - sigma: 0, .045, .1, .167, .25 keep CFG; .357, .5, .7 exceed 0.3.
    assert [guided for _, guided, _ in velocity.calls] == [True] * 5 + [False] * 3


def test_cfg_formula_scales_the_difference():
    pos, neg = torch.full((1, 2), 2.0), torch.full((1, 2), 1.0)
    assert sampler.combine_cfg(pos, neg, 3.0, 0.0).tolist() == [[5.0, 5.0]]  # pos + s * (pos - neg)


def test_cfg_normalization_caps_each_sample_norm():
    pos = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    neg = torch.zeros(2, 2)
    pred = sampler.combine_cfg(pos, neg, 1.0, 1.5)  # unnormalised pred = 2 * pos, norm 10 and 1
    assert torch.linalg.vector_norm(pred, dim=1).tolist() == pytest.approx([7.5, 0.75])
    assert torch.allclose(pred / pred.norm(dim=1, keepdim=True), pos / pos.norm(dim=1, keepdim=True))


def test_euler_step_negates_model_output():
    velocity = RecordingVelocity()
    x = torch.ones(1, 16, 2, 2)
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    out = sampler.denoise(velocity, x, sigmas)
    first = x + (0.5 - 1.0) * -(0.5 * x + 0.0)
    second = first + (0.0 - 0.5) * -(0.5 * first + 0.5)
    assert torch.allclose(out, second)


@pytest.mark.parametrize("steps,strength,start,calls", [(8, 0.6, 3, 5), (8, 1.0, 0, 8), (8, 0.05, 7, 1),
                                                         (4, 0.5, 2, 2), (1, 0.3, 0, 1)])
def test_img2img_start_index_follows_diffusers(steps, strength, start, calls):
    assert sampler.img2img_start_index(steps, strength) == start
    assert len(sampler.shifted_sigmas(steps)[start:]) - 1 == calls


def test_strength_0_6_starts_at_sigma_0_8333_with_five_calls():
    velocity = RecordingVelocity()
    sigmas = sampler.shifted_sigmas(8)[sampler.img2img_start_index(8, 0.6):]
    assert float(sigmas[0]) == pytest.approx(0.833333, abs=1e-6)
    sampler.denoise(velocity, torch.zeros(1, 16, 4, 4), sigmas)
    assert len(velocity.calls) == 5


def test_noise_image_i_uses_seed_plus_i():
    noise = sampler.seeded_noise(41, 3, (16, 6, 8))
    assert noise.dtype == torch.float32 and noise.shape == (3, 16, 6, 8)
    for i in range(3):
        single = torch.randn((1, 16, 6, 8), generator=torch.Generator("cpu").manual_seed(41 + i))
        assert torch.equal(noise[i:i + 1], single)


def test_callback_cancel_stops_within_one_step():
    velocity = RecordingVelocity()
    seen = []

    def on_step(progress):
        seen.append((progress.step, progress.total))
        if progress.step == 3:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        sampler.denoise(velocity, torch.zeros(1, 16, 4, 4), sampler.shifted_sigmas(8), on_step=on_step)
    assert len(velocity.calls) == 3
    assert seen == [(1, 8), (2, 8), (3, 8)]
