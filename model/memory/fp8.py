"""fp8 weights for the transformer's block projections, with two ways to multiply.

Each selected `nn.Linear` becomes a `Float8Linear`: the weight is stored as float8_e4m3fn with one fp32
scale per output row (scale = row amax / 448, so every row uses the whole e4m3 range). Its `matmul`:
- "weight-only": the matmul runs in the original dtype on the exactly-representable upcast weight, with
  the row scale applied to the output. Halves the weight memory of a bf16 model, bf16 tensor-core compute.
- "dynamic": the activations are quantized too, per row (token) at run time (scale = row amax / 448), and
  the product is one fp8 GEMM, torch._scaled_mm with both row scales (fp8 tensor cores: about twice the
  bf16 rate on Ada/Hopper). It needs CUDA compute capability 8.9+ (torch also runs it on the CPU, slowly:
  tests only). Costs a second rounding: see the bound below.

Why our own module rather than torchao's Float8WeightOnlyConfig: torchao 0.18 installs and runs on CPU,
but its weights are tensor subclasses, which the block streaming in model.memory.streaming (plain Parameter
swaps), the LoRA code (which patches weights) and the strict state-dict tools do not handle, and the GPU
image ships another torch than ours; for weight-only fp8 it does the same dequantize-then-matmul as here.

Error: e4m3 keeps 3 mantissa bits, so a rounded weight is within 2**-4 (6.25 %) of its value (relative,
for values above the subnormal range); over a dot product the errors average out to roughly 2 % of the
output's magnitude. tests/model/test_fp8.py bounds the transformer output against the unquantized model.
With "dynamic", x is rounded the same way, so per product |x'w' - xw| <= e_x|w| + |x|e_w + e_x e_w with
e = 2**-4 |v| + 2**-10 * scale (half the subnormal step); tests/model/test_fp8_gemm.py checks that bound.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.options import FP8_MATMULS

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
# Repeated blocks whose projections are quantized: the Z-Image transformer's and a ControlNet's (its blocks
# are transformer blocks too). Embedders, adaLN and the final layer are small and precision sensitive
# (diffusers also keeps t/cap embedders unquantized).
BLOCK_LISTS = ("layers.", "noise_refiner.", "context_refiner.", "control_layers.", "control_noise_refiner.")
BLOCK_PROJECTIONS = (".attention.", ".feed_forward.")
DYNAMIC_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with fp8 tensor cores


def is_block_projection(name: str) -> bool:
    """True for attention and feed-forward Linear layers inside the repeated blocks (of the transformer or a
    ControlNet; a ControlNet block's zero-initialised before/after projections are kept)."""
    return name.startswith(BLOCK_LISTS) and any(part in name for part in BLOCK_PROJECTIONS)


def dynamic_matmul_supported(device: torch.device | str) -> bool:
    """Whether "dynamic" (fp8 GEMM) can run on `device`: CPUs (slow: tests), CUDA from capability 8.9."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= DYNAMIC_MIN_CAPABILITY
    return device.type == "cpu"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, fp32 per-row scale) such that fp8.float() * scale[:, None] approximates `weight`."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantized = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantized, scale


class Float8Linear(nn.Module):
    """Linear layer with an fp8 weight and per-output-row fp32 scale, computing in `compute_dtype`."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype, matmul: str = "weight-only"):
        super().__init__()
        if matmul not in FP8_MATMULS:
            raise ValueError(f"unknown fp8 matmul {matmul!r}; choose one of {', '.join(FP8_MATMULS)}")
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype
        self.matmul = matmul
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: torch.device | str | None = None,
                    matmul: str = "weight-only") -> "Float8Linear":
        """Quantize `linear` (optionally on `device`, so a GPU does the work and keeps the result).

        A fused layer's part names (model.network.fused) are kept, so LoRAs still find its parts.
        """
        weight = linear.weight.detach()
        bias = linear.bias
        if device is not None:
            weight = weight.to(device)
            bias = None if bias is None else bias.to(device)
        quantized, scale = quantize_rows(weight)
        converted = cls(quantized, scale, bias, compute_dtype=linear.weight.dtype, matmul=matmul)
        if hasattr(linear, "fused_parts"):
            converted.fused_parts = linear.fused_parts
        return converted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matmul == "dynamic":
            return self._fp8_gemm(x)
        # e4m3 values are exact in bf16/fp32, so the upcast loses nothing; the row scale is applied to the
        # (smaller than the weight for our shapes' per-token work) output instead of a second weight copy.
        weight = self.weight.to(self.compute_dtype)
        out = F.linear(x.to(self.compute_dtype), weight) * self.weight_scale.to(self.compute_dtype)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out

    def _fp8_gemm(self, x: torch.Tensor) -> torch.Tensor:
        """x quantized per row at run time, then one fp8 GEMM with both row scales, out in compute_dtype."""
        rows = x.reshape(-1, self.in_features)
        x_fp8, x_scale = quantize_rows(rows)
        # mat2 must be column-major: the transpose of the row-major (out, in) weight is exactly that.
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale[:, None], scale_b=self.weight_scale[None, :],
                               bias=None if self.bias is None else self.bias.to(self.compute_dtype),
                               out_dtype=self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, fp8 e4m3 + row scale, matmul={self.matmul}, "
                f"compute={self.compute_dtype}")


def quantize_linears_fp8(module: nn.Module, select: Callable[[str], bool] = is_block_projection,
                         device: torch.device | str | None = None, matmul: str = "weight-only") -> int:
    """Replace every selected `nn.Linear` of `module` (by qualified name) with a Float8Linear; returns the count.

    Layers are converted one at a time, so with `device` set the peak extra memory is one layer's weight.
    `matmul` is "weight-only" or "dynamic" (see the module docstring; check dynamic_matmul_supported first).
    """
    targets = [(name, child) for name, child in module.named_modules()
               if isinstance(child, nn.Linear) and select(name)]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Float8Linear.from_linear(linear, device, matmul))
    logger.info("stored %d linear layers in fp8 (e4m3, per-row scale, %s matmul)", len(targets), matmul)
    return len(targets)


def use_dynamic_fp8(module: nn.Module, device: torch.device | str, quantize: bool) -> int:
    """Switch `module`'s fp8 layers to the fp8 GEMM ("dynamic"); with `quantize`, first store its block
    projections in fp8 (the fast mode of a resident transformer). Returns how many layers use it.

    Only for a module whose layers can still be replaced: a streamed module's offloader holds its
    tensors, so there only layers quantized before streaming (memory mode low) are switched.
    """
    device = torch.device(device)
    if not dynamic_matmul_supported(device):
        raise ValueError(f"fp8 matmul 'dynamic' needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                         f"{torch.cuda.get_device_name(device)} is not one. Use fp8 matmul 'weight-only'")
    if quantize:
        quantize_linears_fp8(module)
    layers = [m for m in module.modules() if isinstance(m, Float8Linear)]
    if not layers:
        raise ValueError("fp8 matmul 'dynamic' needs fp8 layers: use memory mode 'low', or 'full' (resident)")
    for layer in layers:
        layer.matmul = "dynamic"
    logger.info("%d fp8 layers multiply with the fp8 GEMM (activations quantized per token)", len(layers))
    return len(layers)


def fp8_weight_bytes(module: nn.Module, select: Callable[[str], bool] = is_block_projection) -> int:
    """Bytes `module`'s weights would take after quantize_linears_fp8 (without converting anything)."""
    total = 0
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) and select(name):
            rows, cols = child.weight.shape
            total += rows * cols + rows * 4  # 1-byte weights + fp32 scales
            total += 0 if child.bias is None else child.bias.numel() * child.bias.element_size()
        else:
            direct = [*child.parameters(recurse=False), *child.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in direct)
    return total
