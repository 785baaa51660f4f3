"""Text features: equal to diffusers' ZImagePipeline.encode_prompt while encoding only the real tokens."""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImagePipeline
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen3Model

from model.errors import CheckpointError
from model.loading.text_encoder import load_text_encoder, load_tokenizer
from model.network.text_encoder import FALLBACK_TEMPLATE, PromptEncoder

PROMPTS = ["一只猫坐在红色的沙发上", "a neon sign that says hello world, 写着你好世界的霓虹灯招牌", "x"]


def _reference_encode(oracle: ZImagePipeline, prompt: str, max_length: int = 512) -> torch.Tensor:
    with torch.no_grad():
        embeds, _ = oracle.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=max_length)
    return embeds[0]


@pytest.fixture(scope="module")
def oracle(tiny_model_dir) -> ZImagePipeline:
    """diffusers' own prompt encoding, with transformers loading the HF text encoder folder."""
    hf = tiny_model_dir / "hf"
    text_encoder = Qwen3Model.from_pretrained(str(hf / "text_encoder"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(hf / "tokenizer"))
    return ZImagePipeline(scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=None)


@pytest.fixture(scope="module", params=["hf", "comfy"])
def encoder(request, tiny_model_dir) -> PromptEncoder:
    root = tiny_model_dir / request.param
    weights = root / ("text_encoder" if request.param == "hf" else "qwen_3_4b.safetensors")
    model = load_text_encoder(weights, dtype=torch.float32)
    return PromptEncoder(load_tokenizer(root / "tokenizer"), model, max_cached=2)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_features_equal_diffusers_on_real_tokens_only(encoder, oracle, prompt):
    seen_lengths = []
    hook = encoder.model.embed_tokens.register_forward_hook(
        lambda module, args, output: seen_lengths.append(args[0].shape[1]))
    try:
        ours = encoder._encode_uncached(prompt, 512)
    finally:
        hook.remove()
    reference = _reference_encode(oracle, prompt)
    assert seen_lengths == [len(reference)] and len(reference) < 512  # never the padded 512
    assert ours.features.shape == reference.shape
    torch.testing.assert_close(ours.features, reference, atol=1e-5, rtol=0)
    assert ours.token_count == len(reference) and not ours.truncated


def test_truncation_matches_diffusers_and_is_reported(encoder, oracle):
    prompt = "the quick brown fox jumps over the lazy dog " * 4
    ours = encoder._encode_uncached(prompt, 16)
    torch.testing.assert_close(ours.features, _reference_encode(oracle, prompt, 16), atol=1e-5, rtol=0)
    assert ours.truncated and ours.token_count == encoder.count_tokens(prompt) > 16


def test_only_layers_before_the_last_are_built(encoder, oracle):
    assert len(encoder.model.layers) == oracle.text_encoder.config.num_hidden_layers - 1
    assert isinstance(encoder.model.norm, torch.nn.Identity)


def test_template_is_the_qwen_chat_string(encoder):
    assert encoder.render("猫") == FALLBACK_TEMPLATE.format(prompt="猫")
    without_template = PromptEncoder(encoder.tokenizer, encoder.model)
    without_template.tokenizer = type("NoTemplate", (), {"chat_template": None})()
    assert without_template.render("猫") == "<|im_start|>user\n猫<|im_end|>\n<|im_start|>assistant\n"


def test_lru_cache_keeps_the_most_recent_prompts(encoder):
    encoder._cache.clear()
    first = encoder.encode("one")
    assert encoder.encode("one") is first
    encoder.encode("two")
    encoder.encode("three")  # max_cached=2: "one" is evicted
    assert ("one", 512) not in encoder._cache and ("three", 512) in encoder._cache


def test_file_of_another_model_is_rejected(tmp_path):
    path = tmp_path / "qwen_3_4b.safetensors"
    save_file({"model.something.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a Qwen3 text encoder"):
        load_text_encoder(path, dtype=torch.float32)
