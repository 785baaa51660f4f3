"""Engine with sampler choice, seed variety and step previews on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import Engine, GenerationRequest
from model.errors import InvalidRequestError
from model.memory.vram import Admission
from model.request import ENGINE_LIMITS
from model.sampling import catalog, seed_variety

SIZE = dict(width=64, height=48)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def _image(engine, **fields) -> np.ndarray:
    return _pixels(engine.generate(GenerationRequest(prompt="a red fox in snow", **SIZE, **fields)))[0]


def test_default_sampler_is_euler(engine):
    assert GenerationRequest(prompt="x").sampler == "euler"
    assert np.array_equal(_image(engine, seed=3), _image(engine, seed=3, sampler="euler"))


@pytest.mark.parametrize("name", [n for n in catalog.SAMPLERS if n != "euler"])
def test_each_sampler_makes_its_own_image_the_same_for_the_same_seed(engine, name):
    torch.manual_seed(0)
    first = _image(engine, seed=3, sampler=name)
    torch.manual_seed(77)
    torch.rand(10)
    assert np.array_equal(first, _image(engine, seed=3, sampler=name))
    assert np.abs(first - _image(engine, seed=3)).max() > 0


def test_stochastic_sampler_batch_image_is_its_seed_alone(engine):
    batch = _pixels(engine.generate(GenerationRequest(prompt="a red fox in snow", seed=20, batch_size=2,
                                                      sampler="euler_ancestral", **SIZE)))
    alone = _image(engine, seed=21, sampler="euler_ancestral")
    assert np.abs(batch[1] - alone).max() <= 1


@pytest.mark.parametrize("value", ["heun", "Euler", "", None, 3])
def test_unknown_sampler_is_refused_with_the_choices(engine, value):
    with pytest.raises(InvalidRequestError) as error:
        engine.generate(GenerationRequest(prompt="a cat", sampler=value, **SIZE))
    assert error.value.field == "sampler"
    assert all(name in str(error.value) for name in catalog.SAMPLERS)


@pytest.mark.parametrize("value", [-0.1, ENGINE_LIMITS.seed_variety[1] + 1, float("nan"), True, "1"])
def test_seed_variety_out_of_range_is_refused(engine, value):
    with pytest.raises(InvalidRequestError) as error:
        engine.generate(GenerationRequest(prompt="a cat", seed_variety=value, **SIZE))
    assert error.value.field == "seed_variety" and "0 = off" in str(error.value)


def test_seed_variety_off_perturbs_nothing(engine, monkeypatch):
    expected = _image(engine, seed=5)

    def refuse(*args):
        raise AssertionError("seed variety ran while off")

    monkeypatch.setattr(seed_variety, "vary_features", refuse)
    assert np.array_equal(_image(engine, seed=5, seed_variety=0.0), expected)


def test_seed_variety_changes_the_image_deterministically(engine):
    plain = _image(engine, seed=5)
    varied = _image(engine, seed=5, seed_variety=2.0)
    assert np.abs(varied - plain).mean() > 1
    assert np.array_equal(varied, _image(engine, seed=5, seed_variety=2.0))


def test_seed_variety_batch_image_is_its_seed_alone(engine):
    batch = _pixels(engine.generate(GenerationRequest(prompt="a red fox in snow", seed=30, batch_size=2,
                                                      seed_variety=2.0, **SIZE)))
    assert np.abs(batch[1] - _image(engine, seed=31, seed_variety=2.0)).max() <= 1


def test_step_previews_through_the_engine(engine):
    previews = []
    engine.generate(GenerationRequest(prompt="a cat", steps=3, batch_size=2, **SIZE),
                    on_step=lambda progress: previews.append(progress.preview()))
    assert len(previews) == 3
    assert all(len(images) == 2 and images[0].size == (8, 6) for images in previews)


def test_chunked_batch_keeps_each_images_step_noise_and_variety(engine, monkeypatch):
    request = GenerationRequest(prompt="a red fox in snow", seed=40, batch_size=3, sampler="euler_stochastic",
                                seed_variety=2.0, **SIZE)
    whole = _pixels(engine.generate(request))
    monkeypatch.setattr(engine, "_admit", lambda request: Admission(ok=True, needed_bytes=0, available_bytes=None,
                                                                    batch_chunk=2))
    chunked = _pixels(engine.generate(request))  # chunks of images [0, 1] and [2]
    for a, b in zip(chunked, whole):
        assert np.abs(a - b).max() <= 1


def test_seed_variety_with_guidance_varies_the_positive_prompt_only(engine, monkeypatch):
    varied_prompts = []
    original = seed_variety.vary_features

    def recording(features, image_seed, strength):
        varied_prompts.append(features)
        return original(features, image_seed, strength)

    monkeypatch.setattr(seed_variety, "vary_features", recording)
    plain = _image(engine, seed=8, guidance=3.0, negative_prompt="blurry")
    varied = _image(engine, seed=8, guidance=3.0, negative_prompt="blurry", seed_variety=2.0)
    positive = engine.prompt_encoder.encode("a red fox in snow", 512).features
    assert len(varied_prompts) == 1 and torch.equal(varied_prompts[0], positive)
    assert np.abs(varied - plain).mean() > 1
