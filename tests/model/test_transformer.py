"""ZImageTransformer against diffusers' ZImageTransformer2DModel: structure and fp32 parity on CPU."""

from __future__ import annotations

import diffusers  # the test oracle; product code never imports it
import pytest
import torch

from model.network.config import TransformerConfig
from model.loading.transformer import load_transformer
from model.network.rope import apply_rope, caption_position_ids, image_position_ids, rope_table
from model.network.transformer import ZImageTransformer
from tests.model.tiny_transformer import random_state_dict, tiny_config, tiny_inputs, write_hf_transformer


RTOL, ATOL = 1e-4, 1e-5


def test_full_size_model_matches_diffusers_keys_and_parameter_count():
    with torch.device("meta"):
        ours = ZImageTransformer(TransformerConfig())
        reference = diffusers.ZImageTransformer2DModel(axes_lens=[1536, 512, 512])
    assert sum(p.numel() for p in ours.parameters()) == 6_154_908_736
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(ours_shapes) == 521
    assert ours_shapes == reference_shapes


def test_rope_tables_are_not_module_state():
    with torch.device("meta"):
        model = ZImageTransformer(tiny_config())
    assert not any(b.is_complex() for b in model.buffers())
    assert list(model.buffers()) == []


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, reference, config): one tiny checkpoint loaded by our loader and by diffusers."""
    config = tiny_config()
    folder = write_hf_transformer(tmp_path_factory.mktemp("tiny") / "transformer", config, random_state_dict(config))
    ours = load_transformer(folder, dtype=torch.float32)
    reference = diffusers.ZImageTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return ours, reference, config


def _reference(reference, latents, t, captions):
    with torch.no_grad():  # diffusers may modify its list arguments; hand it copies
        return reference([x.clone() for x in latents], t, [c.clone() for c in captions], return_dict=False)[0]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


CASES = {  # name: (latent H x W per sample, caption length per sample, t per sample)
    "batch1": ([(8, 8)], [7], [0.4]),
    "batch2_caption_lengths_differ": ([(8, 8), (8, 8)], [5, 40], [0.3, 0.7]),
    "non_square": ([(8, 12)], [33], [0.5]),
    "tokens_not_multiple_of_32": ([(10, 14)], [12], [0.6]),
    "batch2_image_sizes_differ": ([(10, 14), (8, 8)], [20, 20], [0.2, 0.9]),
    "timesteps_0_to_1": ([(8, 8)] * 4, [9] * 4, [0.0, 0.25, 0.875, 1.0]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_parity_with_diffusers(models, case):
    ours, reference, config = models
    sizes, lengths, times = CASES[case]
    latents, captions = tiny_inputs(config, sizes, lengths)
    t = torch.tensor(times)
    with torch.no_grad():
        out = ours(latents, t, captions)
    expected = _reference(reference, latents, t, captions)
    assert [o.shape for o in out] == [x.shape for x in latents]
    # How far a small change moves the reference: one caption token nudged by 1e-3.
    nudged = [c.clone() for c in captions]
    nudged[0][0] += 1e-3 * torch.randn(config.cap_feat_dim, generator=torch.Generator().manual_seed(5))
    sensitivity = _max_diff(_reference(reference, latents, t, nudged), expected)
    diff = _max_diff(out, expected)
    print(f"\n[parity] {case}: max abs diff {diff:.3g}; caption nudge moves reference by {sensitivity:.3g}")
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    assert sensitivity > 20 * diff, "the test inputs barely influence the output; parity would prove little"


def test_prepared_context_equals_one_shot_forward(models):
    ours, _, config = models
    latents, captions = tiny_inputs(config, [(8, 8), (10, 14)], [5, 40])
    t = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        one_shot = ours(latents, t, captions)
        context = ours.prepare_context(captions)
        split = ours(latents, t, context=context)
        split_again = ours(latents, torch.tensor([0.9, 0.1]), context=context)
        one_shot_again = ours(latents, torch.tensor([0.9, 0.1]), captions)
    for a, b in zip(one_shot + one_shot_again, split + split_again):
        assert torch.equal(a, b)


def test_caption_pad_tokens_are_attended(models):
    """Changing cap_pad_token must change the output: pad tokens are part of the model, unmasked."""
    ours, _, config = models
    latents, captions = tiny_inputs(config, [(8, 8)], [7])
    t = torch.tensor([0.5])
    with torch.no_grad():
        before = ours(latents, t, captions)[0]
        saved = ours.cap_pad_token.clone()
        ours.cap_pad_token.add_(1.0)
        after = ours(latents, t, captions)[0]
        ours.cap_pad_token.copy_(saved)
    assert (before - after).abs().max() > 1e-3


def test_forward_rejects_mismatched_inputs(models):
    ours, _, config = models
    latents, captions = tiny_inputs(config, [(8, 8), (8, 8)], [5])
    with pytest.raises(ValueError, match="2 latents but 1 captions"):
        ours(latents, torch.tensor([0.5, 0.5]), captions)
    with pytest.raises(ValueError, match="3 timesteps"):
        ours(latents, torch.tensor([0.5, 0.5, 0.5]), captions * 2)
    with pytest.raises(ValueError, match="does not fit"):
        ours([torch.zeros(16, 1, 7, 8)], torch.tensor([0.5]), captions)
    with pytest.raises(ValueError, match="cap_feats"):
        ours(latents[:1], torch.tensor([0.5]), [torch.zeros(0, config.cap_feat_dim)])


def test_bf16_load_gives_bf16_parameters_and_errors_no_worse_than_diffusers(tmp_path):
    """Smooth attention (qk_gain 1) keeps bf16 rounding from being amplified chaotically."""
    config = tiny_config()
    folder = write_hf_transformer(tmp_path / "transformer", config, random_state_dict(config, qk_gain=1.0))
    model = load_transformer(folder, dtype=torch.bfloat16)
    fp32_model = load_transformer(folder, dtype=torch.float32)
    reference = diffusers.ZImageTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in model.parameters())
    ours_errors, reference_errors = [], []
    for seed in range(4):
        latents, captions = tiny_inputs(config, [(8, 8)], [7 + 5 * seed], seed=seed)
        t = torch.tensor([0.1 + 0.2 * seed])
        with torch.no_grad():
            out = model(latents, t, captions)[0]
            full = fp32_model(latents, t, captions)[0]
        expected = _reference(reference, [x.bfloat16() for x in latents], t, [c.bfloat16() for c in captions])[0]
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        ours_errors.append(((out.float() - full).norm() / full.norm()).item())
        reference_errors.append(((expected.float() - full).norm() / full.norm()).item())
    ours_mean, reference_mean = sum(ours_errors) / 4, sum(reference_errors) / 4
    print(f"\n[bf16] mean relative L2 error vs fp32: ours {ours_mean:.3g}, diffusers bf16 {reference_mean:.3g}")
    assert ours_mean <= 1.25 * reference_mean


def test_rope_rotates_adjacent_pairs_by_axis_frequencies():
    assert caption_position_ids(3).tolist() == [[1, 0, 0], [2, 0, 0], [3, 0, 0]]
    ids = image_position_ids((1, 2, 3), caption_length=32, pad=2)
    assert ids.tolist() == [[33, 0, 0], [33, 0, 1], [33, 0, 2], [33, 1, 0], [33, 1, 1], [33, 1, 2],
                            [0, 0, 0], [0, 0, 0]]
    axes, theta = (4, 6, 6), 256.0
    position = torch.tensor([[5, 2, 7]])
    x = torch.randn(1, 1, 1, 16)
    out = apply_rope(x, rope_table(position, axes, theta)[None])
    pair = 0
    for axis, dim in enumerate(axes):
        for j in range(dim // 2):
            angle = torch.tensor(position[0, axis].item() / theta ** (2 * j / dim))
            a, b = x[0, 0, 0, 2 * pair], x[0, 0, 0, 2 * pair + 1]
            expected = torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()])
            torch.testing.assert_close(out[0, 0, 0, 2 * pair:2 * pair + 2], expected)
            pair += 1


def test_positions_beyond_the_rope_tables_are_refused():
    config = tiny_config(axes_lens=(64, 32, 32))
    with torch.device("meta"):
        model = ZImageTransformer(config)
    model.load_state_dict(random_state_dict(config), assign=True)
    latents, captions = tiny_inputs(config, [(8, 8)], [70])
    with pytest.raises(ValueError, match="RoPE axis 0"):
        model(latents, torch.tensor([0.5]), captions)
    latents, captions = tiny_inputs(config, [(8, 66)], [5])
    with pytest.raises(ValueError, match="RoPE axis 2"):
        model(latents, torch.tensor([0.5]), captions)
