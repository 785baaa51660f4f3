"""Kernel choices for the CPU: float32 linears through oneDNN, convolutions in channels-last layout.

Linears. PyTorch computes a float32 F.linear on the CPU with MKL's sgemm, which on AMD Zen CPUs does not take
its AVX-512 path; oneDNN (the library PyTorch already uses there for convolutions and bf16 linears) does.
Measured on this project's development machine (AMD EPYC with AVX-512, one thread), a 1088x768 by 768x2048
float32 linear, the shape of a mid-size transformer's feed-forward: 31.6 ms with F.linear, 14.8 ms through
oneDNN; the mid-size transformer's whole forward went from 1.96 s to 1.19 s. Only the summation order
differs: against a float64 result, the largest error on outputs of magnitude ~28 was 1.2e-4 (MKL: 5.3e-5),
ordinary float32 rounding. On Intel CPUs MKL is fast already and the two are close. The choice is made per
call, so every layer of a model can be switched once at load time: a call whose input is on a GPU, is not
float32 (bf16 linears already go through oneDNN) or needs gradients (the oneDNN op has no backward) runs
F.linear exactly as before. Weights stay ordinary Parameters read at each call, so in-place LoRA merges, fp8
replacement and block streaming's Parameter swaps work unchanged.

Convolutions. oneDNN's convolutions work in NHWC; with PyTorch's default NCHW weights every convolution
reorders its input and output. Channels-last conv weights make the whole VAE run in NHWC (a convolution's
output takes its weight's layout): the mid-size VAE's 512x512 decode went from 5.6 s to 4.4 s (two threads).
The NHWC GroupNorm rounds more coarsely than the NCHW one: on a 1024x1024 decode the two layouts differ by at
most 3.5e-4 (one 8-bit level is 7.8e-3), which moved 0.45 % of the 8-bit values by one level.

The Engine applies both only when its device is the CPU; GPU kernels were not measured against these choices.
"""

from __future__ import annotations

import platform

import torch
from torch import nn

# Measured on x86-64 only; other architectures keep PyTorch's default kernels and layout.
AVAILABLE = torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")


class OneDNNLinear(nn.Linear):
    """nn.Linear whose float32 CPU inference calls go through oneDNN; every other call is F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


def use_onednn_linears(module: nn.Module) -> int:
    """Make every plain nn.Linear inside `module` a OneDNNLinear, in place; returns how many.

    The class is swapped on the existing objects (the subclass adds no state), so parameter names,
    hooks and references held elsewhere stay valid. Other Linear-like modules (fp8) are left alone.
    """
    if not AVAILABLE:
        return 0
    plain = [child for child in module.modules() if type(child) is nn.Linear]
    for child in plain:
        child.__class__ = OneDNNLinear
    return len(plain)


def use_cpu_kernels(module: nn.Module) -> int:
    """Both CPU kernel choices above for one model component; returns how many linears were switched.

    Only 4-D parameters (convolution weights) change layout, so components without convolutions are untouched.
    """
    if not AVAILABLE:
        return 0
    module.to(memory_format=torch.channels_last)
    return use_onednn_linears(module)
