"""Real Z-Image-Turbo component footprints and sizes, measured on meta-device modules (test helper).

Building the real architectures on the meta device costs no memory and gives exact byte counts: the
transformer in bf16 (6.15 B parameters), the Qwen3-4B text encoder in bf16 as the engine loads it (last
decoder layer dropped), the Flux VAE in bf16 (a bf16 engine decodes in its own dtype).
"""

from __future__ import annotations

import functools

import torch
from transformers import Qwen3Config, Qwen3Model

from model.network.config import TransformerConfig
from model.memory.placement import Footprint, measure_footprint
from model.network.transformer import ZImageTransformer
from model.network.vae import FluxVAE, VAEConfig
from model.memory.vram import ModelDims

GIB = 2**30
QWEN3_4B_AS_LOADED = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=35,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128)


@functools.lru_cache(maxsize=1)
def real_components() -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {
            "text_encoder": Qwen3Model(Qwen3Config(**QWEN3_4B_AS_LOADED)).to(torch.bfloat16),
            "transformer": ZImageTransformer(TransformerConfig()).to(torch.bfloat16),
            "vae": FluxVAE(VAEConfig()).to(torch.bfloat16),
        }


@functools.lru_cache(maxsize=1)
def real_footprints() -> dict[str, Footprint]:
    return {name: measure_footprint(module, quantizable=name == "transformer")
            for name, module in real_components().items()}


@functools.lru_cache(maxsize=1)
def real_dims() -> ModelDims:
    return ModelDims.from_components(real_components())
