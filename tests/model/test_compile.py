"""torch.compile of the repeated blocks keeps the module tree and the output (graph capture with the
'eager' backend, so the test needs no C++ toolchain and stays fast)."""

from __future__ import annotations

import pytest
import torch

from model.runtime.compile import compile_repeated_blocks
from model.loading.transformer import load_transformer
from tests.model.tiny_transformer import random_state_dict, tiny_config, tiny_inputs, write_hf_transformer


def test_compiled_blocks_keep_names_and_outputs(tmp_path):
    config = tiny_config()
    folder = write_hf_transformer(tmp_path / "transformer", config, random_state_dict(config))
    model = load_transformer(folder, dtype=torch.float32)
    keys = list(model.state_dict())
    latents, captions = tiny_inputs(config, [(8, 8)], [7])
    with torch.inference_mode():
        expected = model(latents, torch.tensor([0.4]), captions)
    assert compile_repeated_blocks(model, backend="eager") == config.n_layers + 2 * config.n_refiner_layers
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        for shape, caption in (((8, 8), 7), ((8, 12), 40)):  # a second shape reuses the dynamic graph
            latents2, captions2 = tiny_inputs(config, [shape], [caption])
            got = model(latents2, torch.tensor([0.4]), captions2)
            if shape == (8, 8):
                assert torch.allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)


def test_streamed_blocks_are_refused():
    blocks = torch.nn.Module()
    blocks.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    blocks.layers[0].register_forward_pre_hook(lambda *_: None)
    with pytest.raises(ValueError, match="cannot be compiled"):
        compile_repeated_blocks(blocks, backend="eager")
