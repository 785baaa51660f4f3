"""What both benchmarks measure alike: the stages, the step count, and a prompt of a known token length."""

from __future__ import annotations

STEPS, PROMPT_TOKENS = 8, 40
STAGES = ("text_encoding", "denoising", "vae_decode", "total")


def prompt_of(tokenizer, tokens: int) -> str:
    """A bilingual prompt cut to `tokens` tokens (the cut falls in the English part, so it decodes cleanly)."""
    words = "一只猫坐在红色的沙发上, " + ("a watercolor painting of mountains at sunrise, a neon sign that says "
                                   "hello world, city street at night in the rain, reflections, ") * 4
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)
