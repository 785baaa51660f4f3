"""The engine consults the VRAM admission before running: refuses with OutOfMemoryError, or runs the batch
in chunks (same images, same seeds) when only that fits. A budget cap stands in for a small GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.engine import Engine
from model.errors import OutOfMemoryError
from model.request import GenerationRequest
from model.memory.vram import RequestShape, estimate_peak


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32, memory_mode="full")


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def test_request_over_the_budget_is_refused_before_any_work(engine):
    engine.memory.budget_cap = 2**20
    try:
        with pytest.raises(OutOfMemoryError, match="Not enough GPU memory for 64x64, batch 1"):
            engine.generate(GenerationRequest(prompt="a cat", width=64, height=64, steps=1))
    finally:
        engine.memory.budget_cap = None


def test_batch_runs_in_chunks_when_only_one_image_fits(engine):
    request = GenerationRequest(prompt="a cat on a sofa", width=64, height=64, steps=2, seed=5, batch_size=2)
    whole = engine.generate(request)
    memory = engine.memory
    tokens = engine.count_tokens(request.prompt)
    one = RequestShape(64, 64, batch_size=1, tiled_vae=True, text_tokens=tokens)
    memory.budget_cap = estimate_peak(memory.plan, memory.footprints, one, memory.dims).total_bytes
    try:
        assert memory.admit(request, tokens).batch_chunk == 1
        chunked = engine.generate(request)
    finally:
        memory.budget_cap = None
    assert chunked.seeds == whole.seeds == [5, 6]
    for a, b in zip(_pixels(chunked), _pixels(whole)):
        assert np.abs(a - b).max() <= 1  # batch-size rounding of the CPU kernels at most
