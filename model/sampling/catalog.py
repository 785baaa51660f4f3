"""The sampler and seed-variety choices a request may make, with their costs and checks (torch-free).

The doors read SAMPLERS to list the choices and say what each costs; the engine calls check_sampler()
while validating a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from model.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplerInfo:
    """One update rule over the flow-matching sigmas.

    calls_per_step: transformer calls per step (a request's `steps` counts steps, so a 2-call sampler
    costs twice the time); stochastic: adds fresh seeded noise every step.
    """

    name: str
    label: str
    calls_per_step: int
    stochastic: bool
    description: str


SAMPLERS: dict[str, SamplerInfo] = {info.name: info for info in (
    SamplerInfo("euler", "Euler", 1, False,
                "first-order flow ODE step; diffusers' FlowMatchEulerDiscreteScheduler, the Turbo default"),
    SamplerInfo("euler_ancestral", "Euler ancestral", 1, True,
                "Euler step below the next sigma, then fresh noise back up to it (ComfyUI's flow rule, eta 1)"),
    SamplerInfo("euler_stochastic", "Euler stochastic (SDE)", 1, True,
                "predict the clean image, re-noise it fully with fresh noise (diffusers' stochastic_sampling)"),
    SamplerInfo("res_multistep", "RES multistep", 1, False,
                "second-order exponential multistep, reuses the previous step's estimate "
                "(ComfyUI's Z-Image template)"),
    SamplerInfo("dpmpp_2m", "DPM++ 2M", 1, False,
                "second-order multistep DPM-Solver++ on flow sigmas (diffusers' DPMSolverMultistepScheduler)"),
)}
DEFAULT_SAMPLER = "euler"


def check_sampler(name: object) -> None:
    """Raise InvalidRequestError(field="sampler") for a name that is not a key of SAMPLERS.

    (seed_variety is a ranged field: model.request.EngineLimits holds its range, the engine checks it.)"""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise InvalidRequestError(
            f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r} ({DEFAULT_SAMPLER} is the default)",
            field="sampler")
