"""torch.compile of the repeated blocks keeps the module tree and the output (graph capture with the
'eager' backend, so the test needs no C++ toolchain and stays fast)."""

from __future__ import annotations

import pytest
import torch

from model.runtime.compile import compile_repeated_blocks, compile_transformer
from model.loading.transformer import load_transformer
from model.memory.fp8 import quantize_linears_fp8
from tests.model.tiny_transformer import (CountingBackend, random_state_dict, tiny_config, tiny_inputs,
                                         write_hf_transformer)


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


# ------------------------------------------------------------------ the whole step as one graph


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    config = tiny_config()
    return write_hf_transformer(tmp_path_factory.mktemp("compile") / "transformer", config,
                                random_state_dict(config)), config


@pytest.mark.parametrize("variant", ["plain", "fused", "fused-fp8-gemm"])
def test_transformer_step_is_one_graph_without_breaks(tiny_folder, variant):
    """Different caption lengths in one batch (key masks) are the hardest case: still one graph."""
    folder, config = tiny_folder
    model = load_transformer(folder, dtype=torch.float32, fuse=variant != "plain")
    if variant == "fused-fp8-gemm":
        quantize_linears_fp8(model, matmul="dynamic")
    latents, captions = tiny_inputs(config, [(8, 8), (8, 8)], [7, 40])
    with torch.inference_mode():
        context = model.prepare_context(captions)
        geometry = model._geometry([tuple(x.shape) for x in latents], context, 2, 1)
        explained = torch._dynamo.explain(model._step)(latents, torch.tensor([0.4, 0.4]), context.tokens,
                                                        geometry, 2, 1)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_compiled_step_compiles_once_per_request_and_matches_eager(tmp_path):
    config = tiny_config()
    folder = write_hf_transformer(tmp_path / "transformer", config, random_state_dict(config))
    model = load_transformer(folder, dtype=torch.float32)
    latents, captions = tiny_inputs(config, [(8, 8)], [7])
    steps = [0.9, 0.7, 0.5, 0.3]
    with torch.inference_mode():
        context = model.prepare_context(captions)
        expected = [model(latents, torch.tensor([t]), context=context)[0] for t in steps]
        backend = CountingBackend()
        compile_transformer(model, backend=backend)
        context = model.prepare_context(captions)  # a new request
        got = [model(latents, torch.tensor([t]), context=context)[0] for t in steps]
    assert backend.compilations == 1  # fixed shapes within a request: one graph serves every step
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_second_caption_length_makes_every_caption_length_reuse_the_graph(tmp_path):
    config = tiny_config()
    folder = write_hf_transformer(tmp_path / "transformer", config, random_state_dict(config))
    model = load_transformer(folder, dtype=torch.float32)
    backend = CountingBackend()
    compile_transformer(model, backend=backend)
    counts = []
    with torch.inference_mode():
        for caption in (7, 40, 70, 100):  # caption buckets 32, 64, 96, 128
            latents, captions = tiny_inputs(config, [(8, 8)], [caption])
            model(latents, torch.tensor([0.5]), captions)
            counts.append(backend.compilations)
    assert counts == [1, 2, 2, 2]


def test_lora_hook_added_after_compiling_is_not_ignored(tmp_path):
    config = tiny_config()
    folder = write_hf_transformer(tmp_path / "transformer", config, random_state_dict(config))
    model = load_transformer(folder, dtype=torch.float32)
    compile_transformer(model, backend=CountingBackend())
    latents, captions = tiny_inputs(config, [(8, 8)], [7])
    with torch.inference_mode():
        before = model(latents, torch.tensor([0.5]), captions)[0]
        handle = model.layers[0].attention.to_out[0].register_forward_hook(lambda _m, _a, out: out * 0)
        hooked = model(latents, torch.tensor([0.5]), captions)[0]
        handle.remove()
        after = model(latents, torch.tensor([0.5]), captions)[0]
    assert not torch.allclose(hooked, before, atol=1e-3)
    assert torch.equal(after, before)


def test_compile_transformer_refuses_bad_mode_a_second_compile_and_streamed(tmp_path):
    config = tiny_config()
    model = load_transformer(write_hf_transformer(tmp_path / "t", config, random_state_dict(config)))
    with pytest.raises(ValueError, match="unknown compile mode"):
        compile_transformer(model, mode="fastest")
    compile_transformer(model, backend=CountingBackend())
    with pytest.raises(ValueError, match="compiled already"):
        compile_transformer(model)
    streamed = torch.nn.Module()
    streamed.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    streamed.layers[0].register_forward_pre_hook(lambda *_: None)
    with pytest.raises(ValueError, match="cannot be compiled"):
        compile_transformer(streamed)
