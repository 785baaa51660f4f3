"""Flow-matching sampling for Z-Image: sigma schedule, seeded noise, CFG and the denoising loop.

Conventions (Tongyi-MAI/Z-Image `src/zimage/scheduler.py`, diffusers' `pipeline_z_image.py`): sigma runs from 1 (pure noise) to 0 (clean). The transformer receives
t = 1 - sigma and predicts x0 - noise; the loop negates that into the flow dx/dsigma = noise - x0 and hands
it to the chosen update rule (model.sampling.solvers; Euler: x_next = x + (sigma_next - sigma) * flow).
Latents and all schedule math stay in fp32.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Protocol, Sequence

import torch

from model.request import StepProgress, StepCallback
from model.sampling.catalog import DEFAULT_SAMPLER, SAMPLERS
from model.sampling.noise import StepNoise
from model.sampling.preview import step_preview
from model.sampling.solvers import make_solver

logger = logging.getLogger(__name__)

# diffusers/official express sigma as a timestep on a 1000-step scale and derive the model time from it;
# we take the same path, (1000 - 1000*sigma)/1000, so fp32 rounding equals the reference exactly.
NUM_TRAIN_TIMESTEPS = 1000
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


class VelocityFn(Protocol):
    """One transformer call. `guided` means x holds [positives..., negatives...] (2B samples)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor: ...


def shifted_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """`steps` sigmas linspace(1, 1/steps) warped by shift*s/(1+(shift-1)*s), plus a terminal 0 (fp32)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    sigmas = shift * base / (1 + (shift - 1) * base)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def img2img_start_index(steps: int, strength: float) -> int:
    """Index of the first sigma used for img2img; the rule of diffusers' ZImageImg2ImgPipeline.get_timesteps.

    strength 1.0 starts at 0 (pure noise, i.e. text-to-image); 0.6 with 8 steps starts at 3 (5 calls).
    """
    init = min(steps * strength, steps)
    return int(max(steps - init, 0))


def model_time(sigma: torch.Tensor) -> torch.Tensor:
    """The transformer's time input t = 1 - sigma (0 = pure noise), computed as the reference does."""
    timestep = sigma * NUM_TRAIN_TIMESTEPS
    return (NUM_TRAIN_TIMESTEPS - timestep) / NUM_TRAIN_TIMESTEPS


def seeded_noise(seed: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 noise [count, *shape]; sample i comes from its own CPU generator seeded seed + i (device independent)."""
    samples = []
    for i in range(count):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        samples.append(torch.randn((1, *shape), generator=generator, dtype=torch.float32))
    return torch.cat(samples)


def noise_latents(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Forward flow process x_sigma = sigma*noise + (1-sigma)*clean (img2img starting point)."""
    return sigma * noise + (1.0 - sigma) * clean


def guidance_at(guidance: float, t: float, cfg_truncation: float) -> float:
    """Guidance scale for one step: 0 when truncation applies (t above cfg_truncation, only when <= 1)."""
    if guidance > 0 and cfg_truncation <= 1 and t > cfg_truncation:
        return 0.0
    return guidance


def combine_cfg(pos: torch.Tensor, neg: torch.Tensor, scale: float, normalization: float) -> torch.Tensor:
    """pred = pos + scale*(pos - neg); with normalization > 0, cap each sample's norm at normalization*|pos|."""
    pred = pos + scale * (pos - neg)
    if normalization > 0:
        pos_norm = torch.linalg.vector_norm(pos.flatten(1), dim=1)
        pred_norm = torch.linalg.vector_norm(pred.flatten(1), dim=1)
        limit = pos_norm * normalization
        factor = torch.where(pred_norm > limit, limit / pred_norm, torch.ones_like(pred_norm))
        pred = pred * factor.view(-1, *([1] * (pred.ndim - 1)))
    return pred


def _velocity_step(
    velocity: VelocityFn, latents: torch.Tensor, t: torch.Tensor, scale: float, normalization: float
) -> torch.Tensor:
    """One transformer call; returns the (guided) model prediction in fp32."""
    batch = latents.shape[0]
    if scale > 0:
        out = velocity(torch.cat([latents, latents]), t.expand(2 * batch), True).float()
        return combine_cfg(out[:batch], out[batch:], scale, normalization)
    return velocity(latents, t.expand(batch), False).float()


def denoise(
    velocity: VelocityFn,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    guidance: float = 0.0,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    on_step: StepCallback | None = None,
    sampler: str = DEFAULT_SAMPLER,
    noise_seeds: Sequence[int] | None = None,
    early_velocity: VelocityFn | None = None,
    early_steps: int = 0,
) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] with `sampler`: exactly one velocity call per step (len(sigmas)-1).

    Stochastic samplers draw their step noise for sample i from the stream of noise_seeds[i]
    (model.sampling.noise). `early_velocity`, when given, replaces `velocity` for the first `early_steps`
    steps (seed variety). `on_step` runs after every step with StepProgress(step, total, sigma reached,
    preview); calling `preview()` renders the step's clean estimate, and nothing is computed when nobody
    calls it. If on_step raises (e.g. GenerationCancelled) the loop stops there and the exception propagates.
    """
    latents = latents.float()
    total = len(sigmas) - 1
    noise = None
    if SAMPLERS[sampler].stochastic:
        if noise_seeds is None or len(noise_seeds) != latents.shape[0]:
            raise ValueError(f"sampler {sampler!r} is stochastic: pass one noise seed per sample")
        noise = StepNoise(noise_seeds, tuple(latents.shape[1:]), latents.device)
    solver = make_solver(sampler, sigmas, noise)
    for i in range(total):
        sigma = sigmas[i]
        t = model_time(sigma)
        scale = guidance_at(guidance, float(t), cfg_truncation)
        step_velocity = early_velocity if early_velocity is not None and i < early_steps else velocity
        # non_blocking: these scalars come from the CPU; a blocking copy would wait for the GPU every step.
        prediction = _velocity_step(step_velocity, latents, t.to(latents.device, non_blocking=True), scale,
                                    cfg_normalization)
        flow = -prediction
        seen, latents = latents, solver.step(i, latents, flow)
        if on_step is not None:
            on_step(StepProgress(step=i + 1, total=total, sigma=float(sigmas[i + 1]),
                                 preview=partial(step_preview, seen, flow, float(sigma))))
    return latents
