"""float32 CPU linears through oneDNN (model.runtime.cpu_kernels): which calls take that path, that their results
are float32-exact up to summation order, and that swapping the class keeps everything else working."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import profile

from model.memory.fp8 import Float8Linear
from model.runtime.cpu_kernels import AVAILABLE, OneDNNLinear, use_cpu_kernels, use_onednn_linears
from model.loading.vae import load_vae

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="oneDNN linears are switched on only on x86-64 CPUs")

ONEDNN_OP = "mkldnn::_linear_pointwise"
# Channels-last GroupNorm and convolution round differently from the NCHW kernels: measured against a
# float64 decode, 2.1e-4 on the tiny VAE's 1x1 latent (NCHW: 6e-6) and 3.5e-4 between the two layouts on a
# 1024x1024 decode of the bench's mid-size VAE. One 8-bit level of the [-1, 1] output is 2/255 = 7.8e-3.
NHWC_ATOL = 1e-3


def _linear(in_features: int = 96, out_features: int = 80, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    assert use_onednn_linears(layer) == 1 and type(layer) is OneDNNLinear
    return layer


def _ops_called(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("shape", [(5, 96), (2, 7, 96), (96,)])
@pytest.mark.parametrize("bias", [True, False])
def test_float32_cpu_calls_use_onednn_and_agree_with_f_linear(shape, bias):
    layer = _linear(bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        ops = _ops_called(lambda: layer(x))
        out = layer(x)
    assert ONEDNN_OP in ops and not {"aten::mm", "aten::addmm"} & ops
    expected = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)  # float32 rounding only


def test_non_contiguous_input():
    layer = _linear()
    x = torch.randn(2, 96, 7).transpose(1, 2)  # (2, 7, 96), not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x.contiguous(), layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_bf16_and_gradient_calls_keep_f_linear():
    layer = _linear()
    with torch.inference_mode():
        bf16 = layer.to(torch.bfloat16)
        x = torch.randn(4, 96, dtype=torch.bfloat16)
        assert ONEDNN_OP not in _ops_called(lambda: bf16(x))
        assert torch.equal(bf16(x), F.linear(x, bf16.weight, bf16.bias))
    layer = _linear()
    x = torch.randn(4, 96, requires_grad=True)
    ops = _ops_called(lambda: layer(x).sum().backward())
    assert ONEDNN_OP not in ops  # the oneDNN op has no backward; training-style calls stay on autograd's path
    reference = x.detach().clone().requires_grad_()
    F.linear(reference, layer.weight.detach(), layer.bias.detach()).sum().backward()
    assert torch.equal(x.grad, reference.grad)


def test_in_place_weight_changes_are_seen():
    """LoRA merges write into the weight in place; the next call must use the merged weight."""
    layer = _linear()
    x = torch.randn(3, 96)
    with torch.inference_mode():
        before = layer(x)
        delta = torch.randn(80, 8) @ torch.randn(8, 96)
        layer.weight.add_(delta)
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_swap_keeps_names_hooks_and_leaves_other_modules_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 16), nn.Conv1d(16, 16, 1))
    model.append(Float8Linear.from_linear(nn.Linear(16, 4)))
    keys = list(model.state_dict())
    x = torch.randn(16, 8)
    with torch.inference_mode():
        expected = model[4](model[2](model[1](model[0](x))))
    seen = []
    model[0].register_forward_hook(lambda *_: seen.append("hook"))
    assert use_onednn_linears(model) == 2
    assert [type(m) for m in model] == [OneDNNLinear, nn.SiLU, OneDNNLinear, nn.Conv1d, Float8Linear]
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        got = model[4](model[2](model[1](model[0](x))))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert seen == ["hook"]
    assert use_onednn_linears(model) == 0  # already switched: nothing left to do


def test_graph_capture_with_torch_compile():
    """compile_blocks on a CPU engine traces through the oneDNN op ('eager' backend: no C++ toolchain needed)."""
    layer = _linear()
    x = torch.randn(2, 7, 96)
    with torch.inference_mode():
        expected = layer(x)
        compiled = torch.compile(layer, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("z_shape", [(2, 16, 6, 5), (1, 16, 1, 1)])
def test_channels_last_vae_keeps_its_layout_and_decodes_the_same(tiny_model_dir, z_shape):
    vae = load_vae(tiny_model_dir / "hf" / "vae")
    z = torch.randn(z_shape, generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        expected, expected_latents = vae.decode(z), vae.encode(images)
        assert use_cpu_kernels(vae) == 8  # q, k, v, out of the encoder and decoder mid-blocks
        layouts = []
        vae.decoder.up_blocks[-1].register_forward_hook(
            lambda _module, _args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
        decoded, latents = vae.decode(z), vae.encode(images)
    assert layouts == [True]  # the last decoder block still computes in NHWC: no silent fallback to NCHW
    torch.testing.assert_close(decoded, expected, rtol=0, atol=NHWC_ATOL)
    torch.testing.assert_close(latents, expected_latents, rtol=0, atol=NHWC_ATOL)


def test_cpu_engine_runs_its_float32_linears_through_onednn(tiny_model_dir):
    from model import Engine, GenerationRequest

    engine = Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)
    components = (engine.transformer, engine.prompt_encoder.model, engine.vae)
    assert all(type(m) is not nn.Linear for c in components for m in c.modules())
    assert all(any(type(m) is OneDNNLinear for m in c.modules()) for c in components)
    convs = [m for m in engine.vae.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    request = GenerationRequest(prompt="a cat", width=64, height=48, steps=1, seed=0)
    ops = _ops_called(lambda: engine.generate(request))
    assert ONEDNN_OP in ops and "aten::addmm" not in ops
