"""Engine speed options on the tiny model: fused projections give the same image, the whole-step compile
is warmed up for configured sizes so no later prompt compiles, and the fp8 GEMM switch."""

from __future__ import annotations

import numpy as np
import torch

from model.engine import Engine
from model.memory.fp8 import Float8Linear
from model.request import GenerationRequest
from model.runtime.compile import compile_transformer
from tests.model.tiny_transformer import CountingBackend

SIZE = dict(width=64, height=64, steps=2, seed=3)


def _engine(tiny_model_dir, **options) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32, **options)


def test_fused_projections_give_the_same_image(tiny_model_dir):
    request = GenerationRequest(prompt="a red cat", **SIZE)
    plain = np.asarray(_engine(tiny_model_dir).generate(request).images[0], dtype=np.int16)
    fused_engine = _engine(tiny_model_dir, fuse_projections=True)
    assert hasattr(fused_engine.transformer.layers[0].attention, "to_qkv")
    fused = np.asarray(fused_engine.generate(request).images[0], dtype=np.int16)
    assert np.abs(plain - fused).max() <= 1  # fp32 rounding of differently blocked matmuls at most


def test_warmup_for_a_size_leaves_nothing_to_compile_for_any_prompt(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    backend = CountingBackend()
    compile_transformer(engine.transformer, backend=backend)
    engine.warmup(sizes=[(64, 64)])
    warmed = backend.compilations
    for prompt in ("a cat " * 20, "a dog on a sofa " * 15, "x"):
        engine.generate(GenerationRequest(prompt=prompt, **SIZE))
    assert warmed >= 1 and backend.compilations == warmed


def test_dynamic_fp8_matmul_quantizes_a_resident_transformer(tiny_model_dir):
    engine = _engine(tiny_model_dir, fp8_matmul="dynamic")
    layers = [m for m in engine.transformer.modules() if isinstance(m, Float8Linear)]
    assert layers and all(layer.matmul == "dynamic" for layer in layers)
    assert engine.generate(GenerationRequest(prompt="a red cat", **SIZE)).images[0].size == (64, 64)

