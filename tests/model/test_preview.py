"""Step previews: the published Flux latent->RGB map, x0 sign convention, size limit, no cost when unused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import sampler
from model.sampling import preview


def test_map_uses_comfyui_flux_factors_rows_per_channel_and_bias():
    latents = torch.zeros(1, 16, 2, 2)
    assert np.asarray(preview.preview_images(latents)[0])[0, 0].tolist() == [123, 118, 117]  # bias only
    latents[0, 0] = 10.0  # channel 0: (-0.0346, 0.0244, 0.0681) in ComfyUI's table
    # 10 * factor + bias = (-0.3789, 0.1722, 0.5959) -> (x + 1) / 2 * 255
    assert np.asarray(preview.preview_images(latents)[0])[1, 1].tolist() == [79, 149, 203]
    latents = torch.zeros(1, 16, 2, 2)
    latents[0, 15] = -10.0  # last channel: (-0.1262, -0.0982, -0.0778); R = 284 before the clip
    assert np.asarray(preview.preview_images(latents)[0])[0, 1].tolist() == [255, 244, 216]


def test_values_are_clipped_to_the_8_bit_range():
    latents = torch.zeros(1, 16, 3, 3)
    latents[0, 12] = 100.0  # channel 12 is positive in R, G and B
    pixels = np.asarray(preview.preview_images(latents)[0])
    assert pixels.dtype == np.uint8 and (pixels == 255).all()
    latents[0, 12] = -100.0
    assert (np.asarray(preview.preview_images(latents)[0]) == 0).all()


@pytest.mark.parametrize("shape,size", [((2, 16, 128, 96), (96, 128)), ((1, 16, 6, 8), (8, 6)),
                                        ((1, 16, 300, 200), (171, 256)), ((1, 16, 40, 512), (256, 20))])
def test_one_rgb_image_per_sample_at_latent_size_at_most_256(shape, size):
    images = preview.preview_images(torch.randn(shape))
    assert len(images) == shape[0]
    assert all(image.mode == "RGB" and image.size == size for image in images)


def test_shrinking_averages_the_latents_before_the_map():
    latents = torch.randn(1, 16, 512, 512)
    small = preview.preview_images(latents, max_side=256)[0]
    expected = preview.preview_images(torch.nn.functional.avg_pool2d(latents, 2))[0]
    assert np.array_equal(np.asarray(small), np.asarray(expected))


def test_step_preview_shows_the_clean_estimate_not_the_noisy_latents():
    clean = torch.randn(1, 16, 8, 8) * 0.5
    noise = torch.randn(1, 16, 8, 8) * 3
    sigma = 0.75
    x = (1 - sigma) * clean + sigma * noise
    flow = noise - clean  # dx/dsigma: the negated model output
    shown = np.asarray(preview.step_preview(x, flow, sigma)[0], dtype=np.int16)
    assert np.abs(shown - np.asarray(preview.preview_images(clean)[0], dtype=np.int16)).max() <= 1
    assert np.abs(shown - np.asarray(preview.preview_images(x)[0], dtype=np.int16)).max() > 10


class Velocity:
    def __call__(self, x, t, guided):
        return torch.tanh(x) * 0.5 + t.view(-1, 1, 1, 1)


def test_previews_cost_nothing_unless_called(monkeypatch):
    made = []
    monkeypatch.setattr(preview, "latent_rgb", lambda latents: made.append(1) or torch.zeros(
        latents.shape[0], *latents.shape[-2:], 3, dtype=torch.uint8))
    sigmas = sampler.shifted_sigmas(8)
    start = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = []
    plain = sampler.denoise(Velocity(), start, sigmas, on_step=seen.append)
    assert made == [] and len(seen) == 8 and all(callable(p.preview) for p in seen)
    watched = sampler.denoise(Velocity(), start, sigmas, on_step=lambda p: p.preview())
    assert len(made) == 8
    assert torch.equal(plain, watched)  # previews never change the result


def test_last_preview_is_the_final_latents():
    sigmas = sampler.shifted_sigmas(4)
    start = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    final = sampler.denoise(Velocity(), start, sigmas, on_step=seen.append)
    assert np.array_equal(np.asarray(seen[-1].preview()[0]), np.asarray(preview.preview_images(final)[0]))
    assert not np.array_equal(np.asarray(seen[0].preview()[0]), np.asarray(seen[-1].preview()[0]))
