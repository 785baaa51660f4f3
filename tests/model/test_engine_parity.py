"""Engine vs diffusers' ZImagePipeline / ZImageImg2ImgPipeline on a tiny random model saved as real files.

The reference pipeline is assembled from diffusers' and transformers' own classes (not our code) and
written with save_pretrained; our Engine loads that folder with its own loaders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImageImg2ImgPipeline,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from diffusers.pipelines.z_image import pipeline_z_image_img2img
from PIL import Image
from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

from model import Engine, GenerationRequest

PROMPT = "一只猫坐在红色的沙发上, a cat on a red sofa"
NEAR_PROMPT = "一只猫坐在红色的沙发上, a cat on a red sofa!"  # one character more
WIDTH, HEIGHT = 64, 48  # small and non-square: the prompt matters more, and h/w mix-ups show
STEPS = 8


def _visible_scale(module: torch.nn.Module, seed: int) -> None:
    """Random pad tokens, sharpened q/k norms, larger adaLN/final weights: the prompt must move the image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("pad_token"):
                param.copy_(noise)
            elif "norm_q" in name or "norm_k" in name:
                param.copy_(4.0 * (1.0 + 0.1 * noise))
            elif "adaLN_modulation" in name or "final_layer" in name:
                param.mul_(3.0)


def _build_reference(tokenizer) -> ZImagePipeline:
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.05,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    ))
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=256, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=64, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
    )
    _visible_scale(transformer, seed=1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """(diffusers pipeline, our Engine loaded from the folder the pipeline saved)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir / "hf" / "tokenizer"))
    pipe = _build_reference(tokenizer)
    folder = tmp_path_factory.mktemp("reference-pipeline")
    pipe.save_pretrained(folder)
    engine = Engine.from_pretrained(folder, device="cpu", dtype=torch.float32)
    return pipe, engine


def _reference_image(pipe, prompt: str, seed: int, **kwargs) -> np.ndarray:
    # diffusers 0.42.1 uses sigmas linspace(1, 1/N, N) (get_default_z_image_sigmas), so N=8 is 8 calls.
    image = pipe(prompt, width=WIDTH, height=HEIGHT, num_inference_steps=STEPS,
                 generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images[0]
    return np.asarray(image, dtype=np.int16)


def _ours(engine, **fields) -> np.ndarray:
    request = GenerationRequest(width=WIDTH, height=HEIGHT, steps=STEPS, **fields)
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def _report(label: str, ours: np.ndarray, ref: np.ndarray, near: np.ndarray) -> None:
    diff, moved = np.abs(ours - ref), np.abs(near - ref)
    print(f"\n{label}: ours vs diffusers max {diff.max()} mean {diff.mean():.4f} (tolerance max 1); "
          f"one-character prompt change moves the reference max {moved.max()} mean {moved.mean():.2f}")
    assert diff.max() <= 1
    assert diff.mean() < 0.05
    assert moved.mean() > 1.0, "the prompt barely moves the reference: this test could not catch a text bug"


def test_text_to_image_matches_diffusers(reference, monkeypatch):
    pipe, engine = reference
    calls = []
    original = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    ref = _reference_image(pipe, PROMPT, seed=7, guidance_scale=0.0)
    assert len(calls) == STEPS  # the reference really ran 8 transformer calls, like our 8 steps
    near = _reference_image(pipe, NEAR_PROMPT, seed=7, guidance_scale=0.0)
    _report("guidance 0", _ours(engine, prompt=PROMPT, seed=7), ref, near)


def test_cfg_with_negative_prompt_matches_diffusers(reference):
    pipe, engine = reference
    negative = "模糊, blurry"
    ref = _reference_image(pipe, PROMPT, seed=3, guidance_scale=4.0, negative_prompt=negative)
    near = _reference_image(pipe, PROMPT, seed=3, guidance_scale=4.0, negative_prompt=negative + "!")
    _report("guidance 4", _ours(engine, prompt=PROMPT, seed=3, guidance=4.0, negative_prompt=negative), ref, near)


def test_cfg_truncation_and_normalization_match_diffusers(reference):
    pipe, engine = reference
    kwargs = dict(guidance_scale=4.0, negative_prompt="", cfg_truncation=0.5, cfg_normalization=1.2)
    ref = _reference_image(pipe, PROMPT, seed=5, **kwargs)
    ours = _ours(engine, prompt=PROMPT, seed=5, guidance=4.0, cfg_truncation=0.5, cfg_normalization=1.2)
    assert np.abs(ours - ref).max() <= 1


def _mode_instead_of_sample(encoder_output, generator=None, sample_mode="sample"):
    return encoder_output.latent_dist.mode()


def test_img2img_matches_diffusers(reference, monkeypatch):
    """Our engine encodes the reference with the posterior mode; diffusers samples it with the generator
    and then draws the noise from the same generator. Patching diffusers to take the mode too leaves the
    noise as the generator's first draw, which is exactly our seed's stream: the random streams are equal."""
    pipe, engine = reference
    monkeypatch.setattr(pipeline_z_image_img2img, "retrieve_latents", _mode_instead_of_sample)
    img2img = ZImageImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    ref = img2img(PROMPT, image=source, strength=0.6, width=WIDTH, height=HEIGHT, num_inference_steps=STEPS,
                  guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(11)).images[0]
    ours = _ours(engine, prompt=PROMPT, seed=11, reference_image=source, strength=0.6)
    diff = np.abs(ours - np.asarray(ref, dtype=np.int16))
    print(f"\nimg2img: max {diff.max()} mean {diff.mean():.4f}")
    assert diff.max() <= 1
