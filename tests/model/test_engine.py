"""Engine behaviour on the tiny model: layouts, result fields, call counts, cancellation, request errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from model import Engine, GenerationRequest
from model.errors import CheckpointError, GenerationCancelled, InvalidRequestError
from model.loading.layout import detect_layout

SIZE = dict(width=64, height=48)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)


@pytest.fixture
def forward_calls(engine, monkeypatch) -> list[int]:
    """Batch size of every transformer call made while the test runs."""
    calls: list[int] = []
    original = engine.transformer.forward

    def counting(x, t, *args, **kwargs):
        calls.append(len(x))
        return original(x, t, *args, **kwargs)

    monkeypatch.setattr(engine.transformer, "forward", counting)
    return calls


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def test_comfy_folder_generates_the_same_image_as_hf_folder(tiny_model_dir, engine):
    comfy = Engine.from_pretrained(tiny_model_dir / "comfy", device="cpu", dtype=torch.float32)
    request = GenerationRequest(prompt="下雨的夜晚 city at night", seed=5, **SIZE)
    assert comfy.describe()["layout"] == "comfy" and engine.describe()["layout"] == "hf"
    assert np.array_equal(_pixels(comfy.generate(request))[0], _pixels(engine.generate(request))[0])


def test_result_carries_seeds_tokens_and_timings(engine):
    request = GenerationRequest(prompt="a cat", seed=10, batch_size=2, **SIZE)
    result = engine.generate(request)
    assert result.seeds == [10, 11]
    assert [image.size for image in result.images] == [(64, 48)] * 2
    assert result.prompt_tokens == engine.count_tokens("a cat") and not result.prompt_truncated
    assert set(result.timings) == {"text_encoding", "denoising", "vae_decode", "total"}
    # Image i of a batch is the image that seed + i gives alone.
    alone = engine.generate(GenerationRequest(prompt="a cat", seed=11, **SIZE))
    assert np.abs(_pixels(result)[1] - _pixels(alone)[0]).max() <= 1
    assert np.abs(_pixels(result)[0] - _pixels(result)[1]).mean() > 1  # seeds differ visibly


def test_steps_are_transformer_calls(engine, forward_calls):
    engine.generate(GenerationRequest(prompt="a cat", steps=8, **SIZE))
    assert forward_calls == [1] * 8


def test_guidance_doubles_the_batch_not_the_calls(engine, forward_calls):
    engine.generate(GenerationRequest(prompt="a cat", steps=8, guidance=4.0, negative_prompt="dog", **SIZE))
    assert forward_calls == [2] * 8


def test_reference_image_strength_sets_the_calls(engine, forward_calls):
    reference = Image.new("RGB", (100, 60), (200, 30, 30))  # other size and aspect: covered and cropped
    result = engine.generate(GenerationRequest(prompt="a cat", steps=8, reference_image=reference, strength=0.6,
                                               **SIZE))
    assert forward_calls == [1] * 5
    assert "vae_encode" in result.timings and result.images[0].size == (64, 48)


def test_cancel_from_callback_stops_within_one_step(engine, forward_calls):
    steps = []

    def on_step(progress):
        steps.append(progress.step)
        if progress.step == 2:
            raise GenerationCancelled("user pressed stop")

    with pytest.raises(GenerationCancelled):
        engine.generate(GenerationRequest(prompt="a cat", steps=8, **SIZE), on_step=on_step)
    assert forward_calls == [1, 1] and steps == [1, 2]


def test_progress_reports_every_step(engine):
    seen = []
    engine.generate(GenerationRequest(prompt="a cat", steps=4, **SIZE), on_step=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1].sigma == 0.0


def test_long_prompt_is_truncated_and_reported(engine):
    prompt = "a cat on a red sofa " * 20
    result = engine.generate(GenerationRequest(prompt=prompt, max_sequence_length=32, **SIZE))
    assert result.prompt_truncated and result.prompt_tokens == engine.count_tokens(prompt) > 32


def test_prompt_features_are_cached(engine):
    calls = []
    hook = engine.prompt_encoder.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        request = GenerationRequest(prompt="cached prompt 缓存", **SIZE)
        engine.generate(request)
        engine.generate(request)
    finally:
        hook.remove()
    assert len(calls) == 1


BAD_REQUESTS = [
    ("prompt", dict(prompt="   ")),
    ("width", dict(width=100)),
    ("height", dict(height=0)),
    ("width", dict(width=16 * 513)),
    ("steps", dict(steps=0)),
    ("steps", dict(steps=51)),
    ("guidance", dict(guidance=-1.0)),
    ("guidance", dict(guidance=20.5)),
    ("batch_size", dict(batch_size=5)),
    ("strength", dict(strength=0.0)),
    ("strength", dict(strength=1.5)),
    ("seed", dict(seed=-1)),
    ("max_sequence_length", dict(max_sequence_length=0)),
    ("reference_image", dict(reference_image="not an image")),
    ("reference_image", dict(reference_image=Image.new("RGB", (1, 400)))),  # a 1x400 strip at 64x48
    ("cfg_truncation", dict(cfg_truncation=1.5)),
]


@pytest.mark.parametrize("field,changes", BAD_REQUESTS, ids=[f"{f}={list(c.values())[0]!r}" for f, c in BAD_REQUESTS])
def test_bad_request_gets_a_clear_error(engine, field, changes):
    fields = dict(prompt="a cat", **SIZE)
    fields.update(changes)
    with pytest.raises(InvalidRequestError) as error:
        engine.generate(GenerationRequest(**fields))
    assert error.value.field == field
    assert field.split("_")[0] in str(error.value)


def test_folder_of_neither_layout_lists_what_it_found(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"x")
    (tmp_path / "vae").mkdir()
    with pytest.raises(CheckpointError) as error:
        Engine.from_pretrained(tmp_path, device="cpu")
    message = str(error.value)
    assert "model.ckpt" in message and "vae/" in message
    assert "model_index.json" in message and "z_image_turbo_bf16.safetensors" in message


def test_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine.from_pretrained(tmp_path / "nowhere", device="cpu")


@pytest.mark.parametrize("with_reference", [False, True])
def test_large_images_use_the_vae_in_bands_with_the_same_result(engine, monkeypatch, with_reference):
    reference = Image.new("RGB", (64, 48), (20, 200, 90)) if with_reference else None
    request = GenerationRequest(prompt="a cat", seed=2, steps=2, reference_image=reference, **SIZE)
    whole = _pixels(engine.generate(request))[0]
    monkeypatch.setattr(engine, "vae_tile_threshold", 4)  # 8x6 latent counts as large now
    assert np.abs(_pixels(engine.generate(request))[0] - whole).max() <= 1


def test_describe_and_warmup(engine):
    info = engine.describe()
    assert info["weights"]["transformer"] == "transformer" and info["dtype"] == "float32"
    assert {"device", "attention_backend", "memory_mode", "version"} <= set(info)
    engine.warmup()


def test_comfyui_models_tree_is_recognised(tmp_path):
    for relative in ("diffusion_models/z_image_turbo_bf16.safetensors", "text_encoders/qwen_3_4b.safetensors",
                     "vae/ae.safetensors", "tokenizer/tokenizer.json"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    layout = detect_layout(tmp_path)
    assert layout.kind == "comfy"
    assert layout.files()["transformer"] == "diffusion_models/z_image_turbo_bf16.safetensors"


def test_vae_runs_in_the_engine_dtype_unless_told_otherwise(tiny_model_dir, engine):
    """bf16 engines decode in bf16 (as diffusers' pipeline does), which halves the VAE's activations;
    `vae_dtype` keeps an fp32 VAE for those who want it. The bf16 decode stays close to fp32's."""
    request = GenerationRequest(prompt="a cat", seed=4, steps=2, **SIZE)
    bf16 = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.bfloat16)
    bf16_fp32_vae = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.bfloat16,
                                           vae_dtype=torch.float32)
    assert bf16.vae.dtype == torch.bfloat16 and bf16.describe()["vae_dtype"] == "bfloat16"
    assert bf16_fp32_vae.vae.dtype == torch.float32 and bf16_fp32_vae.describe()["vae_dtype"] == "float32"
    assert engine.vae.dtype == torch.float32
    half, full = _pixels(bf16.generate(request))[0], _pixels(bf16_fp32_vae.generate(request))[0]
    diff = np.abs(half - full)
    print(f"\n[vae dtype] bf16 vs fp32 decode of the same latents: mean {diff.mean():.2f}, max {diff.max()} levels")
    assert diff.mean() < 2.0


def test_engine_limits_are_the_ones_it_enforces(engine):
    """The engine exposes its limits (torch-free, model.request) and the sampler's seed range is the same."""
    from model import sampler
    from model.request import ENGINE_LIMITS, MAX_SEED

    assert sampler.MAX_SEED == MAX_SEED == ENGINE_LIMITS.seed[1]
    limits = engine.limits
    assert limits.max_side == engine.max_side()
    for name in ("steps", "batch_size"):
        high = limits.range(name)[1]
        engine._validate(GenerationRequest(prompt="a cat", **SIZE, **{name: high}))
        with pytest.raises(InvalidRequestError):
            engine._validate(GenerationRequest(prompt="a cat", **SIZE, **{name: high + 1}))


def test_default_request_runs_on_a_checkpoint_with_few_caption_positions(engine, monkeypatch):
    """max_sequence_length 512 is a cap, not a need: a short prompt fits a RoPE table of 98 positions (96 caption
    tokens); a prompt that does not fit is refused by name."""
    small = dataclasses.replace(engine.transformer.config, axes_lens=(98, *engine.transformer.config.axes_lens[1:]))
    monkeypatch.setattr(engine.transformer, "config", small)
    assert engine.limits.max_prompt_tokens == 96
    request = GenerationRequest(prompt="a cat", seed=3, steps=2, **SIZE)
    assert request.max_sequence_length == 512 and engine.count_tokens("a cat") < 96
    result = engine.generate(request)
    assert len(result.images) == 1 and not result.prompt_truncated
    with pytest.raises(InvalidRequestError) as error:
        engine.generate(GenerationRequest(prompt="word " * 200, steps=1, **SIZE))
    assert error.value.field == "prompt" and "96" in str(error.value)
    with pytest.raises(InvalidRequestError) as error:
        engine.generate(GenerationRequest(prompt="a cat", negative_prompt="word " * 200, guidance=2.0, steps=1,
                                          **SIZE))
    assert error.value.field == "negative_prompt"
