"""Prompt -> Qwen3 caption features for the transformer (chat template, truncation, LRU cache).

Z-Image conditions on hidden_states[-2] of Qwen3 (output of the second-to-last layer, no final norm).
The model loaded by model.loading.text_encoder already stops there. Only the real tokens are encoded:
the reference pads to 512 tokens, but with right padding and causal attention the real tokens never
see the padding, so the kept rows are the same while the work is a fraction of it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 512
# Qwen3's template for one user message with thinking enabled renders exactly this (Tongyi-MAI/Z-Image `src/zimage/pipeline.py`, diffusers' `pipeline_z_image.py`).
FALLBACK_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt wrapped in the chat template (the tokenizer's own template when it has one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
    return FALLBACK_TEMPLATE.format(prompt=prompt)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """All token ids of the templated prompt (no truncation, no padding, no extra special tokens).

    Needs the tokenizer only, so a process without the model (the app in Ray mode) counts the same way."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class PromptFeatures:
    """Caption features [L, hidden] of one prompt, with its token accounting."""

    features: torch.Tensor
    token_count: int  # tokens incl. template, before truncation
    truncated: bool


class PromptEncoder:
    """Tokenizes with the chat template and encodes with a truncated Qwen3Model; caches recent prompts."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, max_cached: int = 32):
        self.tokenizer = tokenizer
        self.model = model
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, int], PromptFeatures] = OrderedDict()

    def render(self, prompt: str) -> str:
        return render_prompt(self.tokenizer, prompt)

    def token_ids(self, prompt: str) -> list[int]:
        return prompt_token_ids(self.tokenizer, prompt)

    def count_tokens(self, prompt: str) -> int:
        return len(self.token_ids(prompt))

    def encode(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> PromptFeatures:
        """Features of `prompt` (CPU copy cached; the returned tensor lives on the CPU)."""
        key = (prompt, max_tokens)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        result = self._encode_uncached(prompt, max_tokens)
        if self.max_cached > 0:
            self._cache[key] = result
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return result

    def _encode_uncached(self, prompt: str, max_tokens: int) -> PromptFeatures:
        ids = self.token_ids(prompt)
        token_count = len(ids)
        truncated = token_count > max_tokens
        if truncated:
            logger.warning("prompt has %d tokens (with template); truncated to %d", len(ids), max_tokens)
            ids = ids[-max_tokens:] if self.tokenizer.truncation_side == "left" else ids[:max_tokens]
        device = self.model.embed_tokens.weight.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, use_cache=False).last_hidden_state  # (1, L, hidden)
        return PromptFeatures(features=hidden[0].cpu(), token_count=token_count, truncated=truncated)
