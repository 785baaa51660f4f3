"""Seeded random streams beside the initial latent noise: per-step sampler noise and seed-variety noise.

Image i's initial noise comes from a CPU generator seeded seed + i (model.sampler.seeded_noise). Every
other random draw for that image comes from its own stream: a CPU generator seeded with a mix of
(seed + i, stream). Mixing (not seed + 1, as ComfyUI's noise sampler does) keeps the streams apart:
seed + 1 is the next image's initial noise in a batch. CPU generators make the numbers independent of the
device and of the global RNG, so a seed means the same image everywhere.
"""

from __future__ import annotations

from typing import Sequence

import torch

_MASK64 = (1 << 64) - 1

# Stream numbers; changing one changes every image that uses it.
STEP_NOISE = 1
SEED_VARIETY_VALUES = 2
SEED_VARIETY_MASK = 3


def stream_seed(image_seed: int, stream: int) -> int:
    """A 64-bit generator seed for (image seed, stream): the splitmix64 finaliser, so nearby seeds and
    streams give unrelated generators."""
    z = (image_seed + stream * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_generator(image_seed: int, stream: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(stream_seed(image_seed, stream))


class StepNoise:
    """Fresh standard-normal noise for stochastic samplers: one draw per call, image i from its own
    generator (stream STEP_NOISE of seed i), so image i of a batch equals the image its seed gives alone."""

    def __init__(self, image_seeds: Sequence[int], shape: tuple[int, ...], device: torch.device):
        self.generators = [stream_generator(seed, STEP_NOISE) for seed in image_seeds]
        self.shape = shape
        self.device = device

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn((1, *self.shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.cat(draws).to(self.device)
