"""Seed variety: the seeded embedding perturbation itself and the early-steps switch in the loop."""

from __future__ import annotations

import pytest
import torch

from model import sampler
from model.sampling import seed_variety

FEATURES = torch.randn(12, 64, generator=torch.Generator().manual_seed(3)) * 4 + 1


def test_perturbation_is_deterministic_per_seed_and_differs_across_seeds():
    torch.manual_seed(0)
    first = seed_variety.vary_features(FEATURES, 41, 1.0)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(first, seed_variety.vary_features(FEATURES, 41, 1.0))
    assert not torch.equal(first, seed_variety.vary_features(FEATURES, 42, 1.0))


def test_half_the_values_move_by_at_most_strength_times_std():
    strength = 0.5
    varied = seed_variety.vary_features(FEATURES, 7, strength)
    change = (varied - FEATURES).abs()
    moved = (change > 0).float().mean().item()
    assert 0.45 < moved < 0.55
    limit = strength * FEATURES.std().item()
    assert change.max().item() <= limit * (1 + 1e-6) and change.max().item() > 0.9 * limit


def test_strength_scales_the_same_noise():
    small = seed_variety.vary_features(FEATURES, 7, 0.5) - FEATURES
    large = seed_variety.vary_features(FEATURES, 7, 1.5) - FEATURES
    torch.testing.assert_close(large, 3 * small, rtol=1e-4, atol=1e-5)


def test_appending_tokens_keeps_the_noise_of_the_first_ones():
    longer = torch.cat([FEATURES, torch.randn(5, 64)])
    short = seed_variety.vary_features(FEATURES, 9, 1.0) - FEATURES
    long = seed_variety.vary_features(longer, 9, 1.0)[:12] - FEATURES
    torch.testing.assert_close(long / longer.std(), short / FEATURES.std(), rtol=1e-4, atol=1e-6)


def test_dtype_and_input_are_kept():
    features = FEATURES.to(torch.bfloat16)
    before = features.clone()
    varied = seed_variety.vary_features(features, 1, 1.0)
    assert varied.dtype == torch.bfloat16 and torch.equal(features, before)


@pytest.mark.parametrize("total,early", [(8, 2), (1, 1), (4, 1), (5, 1), (10, 2), (13, 3), (50, 10)])
def test_early_steps_are_the_first_20_percent(total, early):
    assert seed_variety.early_steps(total) == early


class Tagged:
    def __init__(self, tag, log):
        self.tag, self.log = tag, log

    def __call__(self, x, t, guided):
        self.log.append(self.tag)
        return torch.zeros_like(x)


def test_loop_uses_the_early_model_for_the_early_steps_only():
    log = []
    sampler.denoise(Tagged("plain", log), torch.zeros(1, 16, 2, 2), sampler.shifted_sigmas(8),
                    early_velocity=Tagged("varied", log), early_steps=seed_variety.early_steps(8))
    assert log == ["varied"] * 2 + ["plain"] * 6
