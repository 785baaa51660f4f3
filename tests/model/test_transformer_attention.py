"""The attention function: masks honoured by every backend, backend choice and its one log line."""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from model.network import attention as attention_module
from model.network.attention import attention, set_attention_backend
from model.network.transformer import ZImageTransformer
from tests.model.tiny_transformer import random_state_dict, tiny_config, tiny_inputs


def _qkv(batch=2, seq=40, heads=2, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [3 * torch.randn(batch, seq, heads, dim, generator=gen) for _ in range(3)]


def _per_sample(q, k, v, lengths):
    """Attention of each sample alone over its real tokens: what any mask must reproduce."""
    return [F.scaled_dot_product_attention(*(t[i:i + 1, :n].transpose(1, 2) for t in (q, k, v))).transpose(1, 2)[0]
            for i, n in enumerate(lengths)]


def _fake_flash_module() -> types.ModuleType:
    """flash_attn stand-in computing exact attention per packed segment, so packing bugs show on CPU."""
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", loader=None)
    module.calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, causal=False):
        module.calls.append("dense")
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, causal=False):
        module.calls.append("varlen")
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        bounds = cu_q.tolist()
        assert max_q == max(b - a for a, b in zip(bounds, bounds[1:]))
        parts = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))[0].transpose(0, 1)
                 for a, b in zip(bounds, bounds[1:])]
        return torch.cat(parts)

    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


@pytest.fixture
def fake_flash(monkeypatch):
    module = _fake_flash_module()
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(attention_module, "_flash_usable", lambda q: True)  # the real check wants CUDA
    monkeypatch.setitem(attention_module._state, "backend", "flash")
    return module


@pytest.fixture(autouse=True)
def restore_backend(monkeypatch):
    monkeypatch.setitem(attention_module._state, "backend", "sdpa")
    monkeypatch.setitem(attention_module._state, "logged", set())


def test_sdpa_mask_equals_attention_per_sample():
    q, k, v = _qkv()
    lengths = [40, 23]
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    out = attention(q, k, v, mask)
    for i, expected in enumerate(_per_sample(q, k, v, lengths)):
        torch.testing.assert_close(out[i, :lengths[i]], expected, rtol=1e-5, atol=1e-6)
    unmasked = attention(q, k, v, None)
    assert (unmasked[1, :23] - out[1, :23]).abs().max() > 1e-2  # the mask matters for these inputs


def test_flash_varlen_packs_by_mask(fake_flash):
    q, k, v = _qkv(batch=3)
    lengths = [17, 40, 5]
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    out = attention(q, k, v, mask)
    assert fake_flash.calls == ["varlen"]
    for i, expected in enumerate(_per_sample(q, k, v, lengths)):
        torch.testing.assert_close(out[i, :lengths[i]], expected, rtol=1e-5, atol=1e-6)
    attention(q, k, v, None)
    assert fake_flash.calls == ["varlen", "dense"]


def test_transformer_gives_the_same_result_with_flash_and_sdpa(monkeypatch):
    config = tiny_config()
    with torch.device("meta"):
        model = ZImageTransformer(config)
    model.load_state_dict(random_state_dict(config), assign=True)
    latents, captions = tiny_inputs(config, [(8, 8), (10, 14)], [5, 40])  # lengths differ: masks needed
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        with_sdpa = model(latents, t, captions)
        module = _fake_flash_module()
        monkeypatch.setitem(sys.modules, "flash_attn", module)
        monkeypatch.setattr(attention_module, "_flash_usable", lambda q: True)
        monkeypatch.setitem(attention_module._state, "backend", "flash")
        with_flash = model(latents, t, captions)
    assert "varlen" in module.calls
    for a, b in zip(with_sdpa, with_flash):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backend_selection(monkeypatch, caplog):
    monkeypatch.setattr(attention_module, "_flash_installed", lambda: False)
    with caplog.at_level(logging.INFO, logger="model.network.attention"):
        assert set_attention_backend("auto") == "sdpa"
        assert set_attention_backend("auto") == "sdpa"
    assert [r.getMessage() for r in caplog.records] == ["attention backend: sdpa (requested auto)"]
    with pytest.raises(ValueError, match="flash_attn"):
        set_attention_backend("flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("xformers")
    monkeypatch.setattr(attention_module, "_flash_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert set_attention_backend("auto") == "flash"


def test_flash_backend_falls_back_to_sdpa_for_cpu_tensors(monkeypatch, caplog):
    monkeypatch.setitem(attention_module._state, "backend", "flash")
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="model.network.attention"):
        out = attention(q, k, v, None)
        attention(q, k, v, None)
    torch.testing.assert_close(out[0], _per_sample(q, k, v, [40, 40])[0])
    assert len([r for r in caplog.records if "cannot run" in r.getMessage()]) == 1
