"""Seed variety: more different images across seeds from Turbo, by perturbing the prompt embedding early.

The remedy of ComfyUI's SeedVarianceEnhancer and InvokeAI's Z-Image Seed Variance Enhancer, written anew:
a seeded half of the positive prompt's embedding values get uniform noise in [-1, 1] x strength x the
embedding's standard deviation (InvokeAI's prompt-independent scale), and only the first 20 % of the steps
see it (SeedVarianceEnhancer's default "noise on beginning steps"), so the late steps pull the image back
to the prompt. Noise and mask come from separate per-image streams (model.sampling.noise), so token j's
noise does not depend on the prompt's length: appending words keeps the variation of the first ones.
Off (strength 0) nothing changes.
"""

from __future__ import annotations

import torch

from model.sampling.noise import SEED_VARIETY_MASK, SEED_VARIETY_VALUES, stream_generator

SHARE = 0.5  # fraction of the embedding values that get noise
EARLY_PERCENT = 20  # share of the steps that see the varied embedding


def early_steps(total: int) -> int:
    """Steps i (0-based) with i / total < 20 %: 2 of 8, and always at least the first."""
    return -(-total * EARLY_PERCENT // 100)


def vary_features(features: torch.Tensor, image_seed: int, strength: float) -> torch.Tensor:
    """Caption features [L, D] of one prompt -> a perturbed copy for the image with `image_seed`."""
    shape = tuple(features.shape)
    values = torch.rand(shape, generator=stream_generator(image_seed, SEED_VARIETY_VALUES)) * 2.0 - 1.0
    mask = torch.rand(shape, generator=stream_generator(image_seed, SEED_VARIETY_MASK)) < SHARE
    scale = strength * features.float().std().item()
    noise = (values * mask * scale).to(features.device)
    return (features.float() + noise).to(features.dtype)
