"""Update rules over the flow-matching sigmas: one solver object per run, one step() per transformer call.

Convention (model.sampler): x_sigma = (1 - sigma) * x0 + sigma * noise, and `flow` = dx/dsigma =
noise - x0 (the negated model output), so the model's clean-image estimate is x0 = x - sigma * flow.
Coefficients are computed in double precision from the fp32 sigmas (Python floats: no device syncs);
Euler keeps the exact tensor arithmetic it always had, so its numbers do not change.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

NoiseFn = Callable[[], torch.Tensor]


def clean_estimate(x: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """The model's current estimate of the clean latents, x0 = x - sigma * flow."""
    return x - sigma * flow


class Solver:
    """Base: holds the sigmas (fp32 tensor and as floats) and, for stochastic rules, the noise source."""

    def __init__(self, sigmas: torch.Tensor, noise: NoiseFn | None = None):
        self.sigmas = sigmas
        self.values = sigmas.tolist()
        self.noise = noise

    def step(self, i: int, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """x at sigmas[i] and the flow predicted there -> x at sigmas[i + 1]."""
        raise NotImplementedError


class Euler(Solver):
    """x_next = x + (sigma_next - sigma) * flow (diffusers' FlowMatchEulerDiscreteScheduler)."""

    def step(self, i, x, flow):
        # non_blocking: the sigmas live on the CPU; a blocking copy would wait for the GPU every step.
        return x + (self.sigmas[i + 1] - self.sigmas[i]).to(x.device, non_blocking=True) * flow


class EulerAncestral(Solver):
    """ComfyUI's rectified-flow Euler ancestral with eta 1 (sample_euler_ancestral_RF): an Euler step to
    sigma_down = sigma_next^2 / sigma, rescaled to the signal level of sigma_next, plus fresh noise that
    brings the noise level back up to sigma_next. The last step (sigma_next = 0) returns x0."""

    def step(self, i, x, flow):
        sigma, sigma_next = self.values[i], self.values[i + 1]
        if sigma_next == 0:
            return clean_estimate(x, flow, sigma)
        sigma_down = sigma_next * sigma_next / sigma
        alpha_next, alpha_down = 1.0 - sigma_next, 1.0 - sigma_down
        # >= 0 because sigma_down <= sigma_next; max() only absorbs rounding.
        renoise = math.sqrt(max(sigma_next ** 2 - (sigma_down * alpha_next / alpha_down) ** 2, 0.0))
        x_down = x + (sigma_down - sigma) * flow
        return (alpha_next / alpha_down) * x_down + renoise * self.noise()


class EulerStochastic(Solver):
    """diffusers' FlowMatchEulerDiscreteScheduler(stochastic_sampling=True): x0, then fully re-noised to
    sigma_next with fresh noise, x_next = (1 - sigma_next) * x0 + sigma_next * noise."""

    def step(self, i, x, flow):
        sigma_next = self.values[i + 1]
        x0 = clean_estimate(x, flow, self.values[i])
        if sigma_next == 0:
            return x0
        return (1.0 - sigma_next) * x0 + sigma_next * self.noise()


class _Multistep(Solver):
    """A rule that also uses the previous step's clean estimate and sigma (none on the first step)."""

    def __init__(self, sigmas, noise=None):
        super().__init__(sigmas, noise)
        self.previous: tuple[torch.Tensor, float] | None = None

    def step(self, i, x, flow):
        sigma, sigma_next = self.values[i], self.values[i + 1]
        x0 = clean_estimate(x, flow, sigma)
        if self.previous is None or sigma_next == 0:
            out = x + (sigma_next - sigma) * flow  # first order: Euler (also the exact last step to x0)
        else:
            out = self.second_order(x, flow, x0, sigma, sigma_next, *self.previous)
        self.previous = (x0, sigma)
        return out

    def second_order(self, x, flow, x0, sigma, sigma_next, x0_prev, sigma_prev):
        raise NotImplementedError


class ResMultistep(_Multistep):
    """ComfyUI's res_multistep (eta 0; RES, arXiv 2308.02157), in time t = -log(sigma):
    h = t_next - t, c2 = (t_prev - t) / h, x_next = (sigma_next/sigma) x + h (b1 x0 + b2 x0_prev) with
    b2 = phi2(-h) / c2 and b1 = phi1(-h) - b2, phi1(z) = (e^z - 1)/z, phi2(z) = (phi1(z) - 1)/z."""

    def second_order(self, x, flow, x0, sigma, sigma_next, x0_prev, sigma_prev):
        h = math.log(sigma / sigma_next)
        c2 = math.log(sigma / sigma_prev) / h
        phi1 = math.expm1(-h) / -h
        phi2 = (phi1 - 1.0) / -h
        b2 = phi2 / c2
        b1 = phi1 - b2
        return (sigma_next / sigma) * x + (h * b1) * x0 + (h * b2) * x0_prev


def _half_log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma (flow sigmas)."""
    return math.log((1.0 - sigma) / sigma)


class DpmPP2M(_Multistep):
    """DPM-Solver++(2M), midpoint form, on flow sigmas (alpha = 1 - sigma), the update diffusers'
    DPMSolverMultistepScheduler(use_flow_sigmas, prediction_type="flow_prediction") makes.

    Its first-order update (sigma_next/sigma) x + (alpha_next - sigma_next alpha/sigma) x0 equals the Euler
    step, so 2M = Euler + (1 - sigma_next/sigma) / (2 r) * (x0 - x0_prev) with r = h_prev / h in lambda.
    After sigma = 1 (lambda = -inf) r is infinite and the correction vanishes, as it does in diffusers.
    """

    def second_order(self, x, flow, x0, sigma, sigma_next, x0_prev, sigma_prev):
        euler = x + (sigma_next - sigma) * flow
        if sigma_prev >= 1.0:
            return euler
        h = _half_log_snr(sigma_next) - _half_log_snr(sigma)
        h_prev = _half_log_snr(sigma) - _half_log_snr(sigma_prev)
        return euler + (0.5 * (1.0 - sigma_next / sigma) * h / h_prev) * (x0 - x0_prev)


SOLVERS: dict[str, type[Solver]] = {
    "euler": Euler,
    "euler_ancestral": EulerAncestral,
    "euler_stochastic": EulerStochastic,
    "res_multistep": ResMultistep,
    "dpmpp_2m": DpmPP2M,
}


def make_solver(name: str, sigmas: torch.Tensor, noise: NoiseFn | None = None) -> Solver:
    """The solver called `name` (a key of model.sampling.catalog.SAMPLERS) for one run over `sigmas`."""
    return SOLVERS[name](sigmas, noise)
