"""Sampler choice: each update rule against diffusers or a separately written reference, seeded noise.

The model is a fixed nonlinear fake (FakeVelocity); both sides call it on their own latents, so any
difference in an update rule grows over the steps instead of hiding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from model import sampler
from model.sampling import catalog, noise, solvers

SHAPE = (16, 6, 8)
STEPS = 8
SEED = 1234


class FakeVelocity:
    """Deterministic stand-in for the transformer: raw output (x0 - noise) from x and t; counts calls."""

    def __init__(self):
        self.calls = 0
        target = torch.Generator().manual_seed(7)
        self.target = torch.randn((1, *SHAPE), generator=target)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
        self.calls += 1
        t = t.view(-1, 1, 1, 1)
        return torch.tanh(self.target - x) * (1.0 + t) - 0.3 * x * t


def start_noise(seed: int = SEED, count: int = 1) -> torch.Tensor:
    return sampler.seeded_noise(seed, count, SHAPE)


def flow_at(model: FakeVelocity, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What our loop feeds a rule: the negated model output at the model time of `sigma`."""
    return -model(x, sampler.model_time(sigma).expand(x.shape[0]), False)


def step_noise_draws(seed: int):
    """The step noise a stochastic sampler sees for the image with `seed`, one draw per call."""
    generator = noise.stream_generator(seed, noise.STEP_NOISE)
    return lambda: torch.randn((1, *SHAPE), generator=generator)


def run(name: str, x: torch.Tensor, sigmas: torch.Tensor, seeds=None, model=None) -> torch.Tensor:
    return sampler.denoise(model or FakeVelocity(), x, sigmas, sampler=name, noise_seeds=seeds)


# ------------------------------------------------------------------------------------- catalogue


def test_every_catalogue_entry_has_a_solver_and_one_call_per_step():
    assert catalog.DEFAULT_SAMPLER == "euler"
    assert set(catalog.SAMPLERS) == set(solvers.SOLVERS)
    for name, info in catalog.SAMPLERS.items():
        model = FakeVelocity()
        run(name, start_noise(), sampler.shifted_sigmas(STEPS), seeds=[SEED], model=model)
        assert model.calls == info.calls_per_step * STEPS, name


def test_catalogue_imports_without_torch():
    # The doors list the choices and their costs without loading the engine.
    code = "import sys, model.sampling.catalog; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_stochastic_sampler_refuses_to_run_without_one_seed_per_sample():
    with pytest.raises(ValueError, match="one noise seed per sample"):
        run("euler_ancestral", start_noise(count=2), sampler.shifted_sigmas(STEPS), seeds=[SEED])


# ------------------------------------------------------------------------------ diffusers parity


def test_euler_stochastic_matches_diffusers_stochastic_sampling_with_the_same_noise():
    sigmas = sampler.shifted_sigmas(STEPS)
    ours = run("euler_stochastic", start_noise(), sigmas, seeds=[SEED])

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False, stochastic_sampling=True)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / STEPS, STEPS).tolist())
    assert torch.equal(scheduler.sigmas, sigmas)
    generator = noise.stream_generator(SEED, noise.STEP_NOISE)  # inject our noise stream
    model, x = FakeVelocity(), start_noise()
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(flow_at(model, x, sigmas[i]), timestep, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)
    assert (ours - run("euler", start_noise(), sigmas)).abs().max() > 0.05  # the noise does matter


@pytest.mark.parametrize("steps,start", [(8, 0), (8, 3), (4, 0), (13, 0)])
def test_dpmpp_2m_matches_diffusers_dpm_solver_on_flow_sigmas(steps, start):
    sigmas = sampler.shifted_sigmas(steps)[start:]
    ours = run("dpmpp_2m", start_noise(), sigmas)

    scheduler = DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(num_inference_steps=len(sigmas) - 1)
    scheduler.sigmas = sigmas.clone()  # explicit sigmas: its set_timesteps() takes none in diffusers 0.42.1
    scheduler.set_begin_index(0)
    model, x = FakeVelocity(), start_noise()
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(flow_at(model, x, sigmas[i]), timestep, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=5e-6, atol=5e-6)
    if steps >= 4:  # at least one genuinely second-order step: not Euler
        assert (ours - run("euler", start_noise(), sigmas)).abs().max() > 1e-3


# ---------------------------------------------------------------- references for ComfyUI's rules


def comfy_res_multistep(model, x, sigmas):
    """ComfyUI's res_multistep with eta 0, transcribed from its update rule on the denoised prediction
    (comfy/k_diffusion/sampling.py, res_multistep): Euler on the first and the last step."""
    old_denoised, old_sigma_down = None, None
    for i in range(len(sigmas) - 1):
        denoised = x - sigmas[i] * flow_at(model, x, sigmas[i])
        sigma_down = sigmas[i + 1]  # eta 0: no ancestral split
        if sigma_down == 0 or old_denoised is None:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = (-s.log() for s in (sigmas[i], old_sigma_down, sigma_down, sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            x = torch.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised, old_sigma_down = denoised, sigma_down
    return x


def comfy_euler_ancestral_rf(model, x, sigmas, draw, eta=1.0):
    """ComfyUI's sample_euler_ancestral_RF (the rule it uses for flow models), transcribed."""
    for i in range(len(sigmas) - 1):
        denoised = x - sigmas[i] * flow_at(model, x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
        sigma_down = sigmas[i + 1] * downstep_ratio
        alpha_ip1, alpha_down = 1 - sigmas[i + 1], 1 - sigma_down
        renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        x = (alpha_ip1 / alpha_down) * x + draw() * renoise_coeff
    return x


@pytest.mark.parametrize("steps,start", [(8, 0), (8, 3), (13, 0)])
def test_res_multistep_follows_comfyui_rule(steps, start):
    sigmas = sampler.shifted_sigmas(steps)[start:]
    reference = comfy_res_multistep(FakeVelocity(), start_noise(), sigmas)
    torch.testing.assert_close(run("res_multistep", start_noise(), sigmas), reference, rtol=5e-6, atol=5e-6)
    assert (reference - run("euler", start_noise(), sigmas)).abs().max() > 1e-3


def test_res_multistep_first_step_is_euler():
    sigmas = sampler.shifted_sigmas(STEPS)[:2]
    assert torch.equal(run("res_multistep", start_noise(), sigmas), run("euler", start_noise(), sigmas))


@pytest.mark.parametrize("steps", [8, 4])
def test_euler_ancestral_follows_comfyui_rf_rule_with_the_same_noise(steps):
    sigmas = sampler.shifted_sigmas(steps)
    reference = comfy_euler_ancestral_rf(FakeVelocity(), start_noise(), sigmas, step_noise_draws(SEED))
    torch.testing.assert_close(run("euler_ancestral", start_noise(), sigmas, seeds=[SEED]), reference,
                               rtol=5e-6, atol=5e-6)
    assert (reference - run("euler", start_noise(), sigmas)).abs().max() > 0.05


# --------------------------------------------------------------------------- seeded step noise


@pytest.mark.parametrize("name", [n for n, info in catalog.SAMPLERS.items() if info.stochastic])
def test_stochastic_samplers_depend_on_the_seed_only(name):
    sigmas = sampler.shifted_sigmas(STEPS)
    torch.manual_seed(1)
    first = run(name, start_noise(), sigmas, seeds=[SEED])
    torch.manual_seed(999)
    torch.randn(100)  # the global RNG state must not matter
    again = run(name, start_noise(), sigmas, seeds=[SEED])
    other = run(name, start_noise(), sigmas, seeds=[SEED + 1])
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.05


@pytest.mark.parametrize("name", [n for n, info in catalog.SAMPLERS.items() if info.stochastic])
def test_image_i_of_a_batch_gets_the_step_noise_of_its_own_seed(name):
    sigmas = sampler.shifted_sigmas(STEPS)
    batch = run(name, start_noise(SEED, 2), sigmas, seeds=[SEED, SEED + 1])
    alone = run(name, start_noise(SEED + 1, 1), sigmas, seeds=[SEED + 1])
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-6)


def test_step_noise_is_not_the_initial_noise_of_any_nearby_seed():
    draw = noise.StepNoise([SEED], SHAPE, torch.device("cpu"))()
    for seed in range(SEED - 2, SEED + 3):
        assert not torch.allclose(draw, start_noise(seed), atol=0.5)


def test_stream_seeds_are_deterministic_and_distinct():
    seeds = {noise.stream_seed(s, stream) for s in range(50) for stream in (0, 1, 2, 3)}
    assert len(seeds) == 200
    assert noise.stream_seed(5, noise.STEP_NOISE) == noise.stream_seed(5, noise.STEP_NOISE)
    assert all(0 <= s < 2 ** 64 for s in seeds)
    top = noise.stream_generator(sampler.MAX_SEED, noise.STEP_NOISE)  # the largest seed is accepted
    assert torch.randn(1, generator=top).isfinite().all()


def test_dpmpp_2m_second_step_after_sigma_one_is_first_order():
    # With sigma_prev = 1 diffusers' log-SNR is -inf: DPM++ 2M's second step is first order there.
    sigmas = sampler.shifted_sigmas(STEPS)[:3]
    assert torch.equal(run("dpmpp_2m", start_noise(), sigmas), run("euler", start_noise(), sigmas))
