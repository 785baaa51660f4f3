"""The one attention function of the transformer, with selectable backends.

Backends: "sdpa" (PyTorch scaled_dot_product_attention, the default) and "flash" (flash_attn's
kernels, used when the package is importable and the tensors are half precision on CUDA). A key
mask for batches whose sequences differ in length is honoured by every backend: SDPA gets a
boolean mask, flash packs the valid tokens and runs the varlen kernel with cu_seqlens.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import torch
import torch.nn.functional as F

from model.options import ATTENTION_BACKENDS as BACKENDS

logger = logging.getLogger(__name__)

_state = {"backend": "sdpa", "logged": set()}


def set_attention_backend(name: str) -> str:
    """Choose the backend ("auto" = flash when installed and CUDA is present, else sdpa).

    Returns the backend in effect. Asking for "flash" without flash_attn installed is an error
    rather than a silent fallback, so a misconfigured server says so at start.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    flash_ok = _flash_installed()
    if name == "flash" and not flash_ok:
        raise ValueError("attention backend 'flash' needs the flash_attn package; install it "
                         "(pip install flash-attn) or use 'sdpa'")
    chosen = name
    if name == "auto":
        chosen = "flash" if flash_ok and torch.cuda.is_available() else "sdpa"
    _state["backend"] = chosen
    _log_once(f"set:{name}:{chosen}", "attention backend: %s (requested %s)", chosen, name)
    return chosen


def get_attention_backend() -> str:
    return _state["backend"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Non-causal multi-head attention with scale 1/sqrt(head_dim).

    q, k, v: (B, S, H, head_dim). mask: bool (B, S), True for real tokens (a prefix of each row),
    or None when every row is full. Returns (B, S, H, head_dim); rows outside the mask hold
    values that callers must ignore.
    """
    if _state["backend"] == "flash" and _flash_usable(q):
        return _flash_attention(q, k, v, mask)
    return _sdpa_attention(q, k, v, mask)


def _sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S): hides padded keys
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)  # (B, H, S, head_dim)
    return out.transpose(1, 2)


def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flash_attn = importlib.import_module("flash_attn")
    if mask is None:
        return flash_attn.flash_attn_func(q, k, v, dropout_p=0.0, causal=False)
    batch, seq = mask.shape
    lengths = mask.sum(dim=1, dtype=torch.int32)  # (B,)
    cu_seqlens = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))  # (B + 1,)
    keep = mask.reshape(-1).nonzero(as_tuple=True)[0]  # flat indices of real tokens
    packed = [t.reshape(batch * seq, *t.shape[2:]).index_select(0, keep) for t in (q, k, v)]
    max_len = int(lengths.max())
    out = flash_attn.flash_attn_varlen_func(*packed, cu_seqlens, cu_seqlens, max_len, max_len,
                                            dropout_p=0.0, causal=False)  # (total, H, head_dim)
    full = out.new_zeros(batch * seq, *out.shape[1:])
    full.index_copy_(0, keep, out)
    return full.view(batch, seq, *out.shape[1:])


def _flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_usable(q: torch.Tensor) -> bool:
    """flash_attn only runs fp16/bf16 CUDA tensors; other calls use SDPA (said once in the log)."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return True
    _log_once(f"fallback:{q.device.type}:{q.dtype}", "flash attention cannot run %s tensors on %s; "
              "using sdpa for them", q.dtype, q.device.type)
    return False


def _log_once(key: str, message: str, *args: object) -> None:
    if key not in _state["logged"]:
        _state["logged"].add(key)
        logger.info(message, *args)
