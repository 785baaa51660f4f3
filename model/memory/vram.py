"""Peak device-memory estimate of a request, computed before it runs, and the admission decision.

peak = max over stages (text encoding, reference-image encoding, denoising, VAE decoding) of
       weights on the device during that stage (from the PlacementPlan) + that stage's activations.
Activations assume PyTorch SDPA with memory-efficient/flash kernels (no S x S score matrix), which is
what CUDA uses for these shapes. The figures are deliberately on the high side (a few hundred MiB of
headroom for cuBLAS/cuDNN workspaces and allocator slack), so "fits" means it fits.

`check_request` turns an estimate into an Admission: run as is, run with tiled VAE decoding, run the
batch in smaller chunks, or refuse with a message that says what is needed, what is free and what to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping

from torch import nn

from model.errors import OutOfMemoryError
from model.request import uses_cfg
from model.network.transformer import SEQ_MULTIPLE  # image and caption token counts are padded to this
from model.network.vae import DEFAULT_TILE  # tiled decoding keeps at most (DEFAULT_TILE * 8)^2 pixels on the device

if TYPE_CHECKING:
    from model.memory.placement import Footprint, PlacementPlan
    from model.request import GenerationRequest

logger = logging.getLogger(__name__)

GIB = 2**30
WORKSPACE_BYTES = 512 * 2**20  # cuBLAS/cuDNN workspaces, allocator fragmentation, small tensors
VAE_LIVE_FULL_RES_TENSORS = 4  # live full-resolution feature maps at the decoder's peak (resnet + shortcut)


@dataclass(frozen=True)
class ModelDims:
    """Architecture sizes the activation estimate needs (defaults: Z-Image-Turbo, bf16 transformer)."""

    dim: int = 3840
    ffn_dim: int = 10240
    text_hidden: int = 2560
    text_intermediate: int = 9728
    text_heads: int = 32
    vae_full_res_channels: int = 256  # widest feature map at full image resolution in the decoder
    vae_encoder_channels: int = 128
    vae_scale: int = 8
    patch: int = 2
    act_bytes: int = 2  # transformer activation dtype
    text_act_bytes: int = 2
    vae_act_bytes: int = 2

    @classmethod
    def from_components(cls, components: Mapping[str, nn.Module]) -> "ModelDims":
        """Read the sizes from loaded modules (diffusers/HF parameter names); unknown parts keep defaults."""
        dims = cls()
        params = {name: dict(module.named_parameters()) for name, module in components.items()}
        transformer, text, vae = (params.get(n, {}) for n in ("transformer", "text_encoder", "vae"))
        if "x_pad_token" in transformer:
            dims = replace(dims, dim=transformer["x_pad_token"].shape[-1],
                           act_bytes=transformer["x_pad_token"].element_size())
        if "layers.0.feed_forward.w1.weight" in transformer:
            dims = replace(dims, ffn_dim=transformer["layers.0.feed_forward.w1.weight"].shape[0])
        if "embed_tokens.weight" in text:
            dims = replace(dims, text_hidden=text["embed_tokens.weight"].shape[1],
                           text_act_bytes=text["embed_tokens.weight"].element_size())
        if "layers.0.mlp.gate_proj.weight" in text:
            dims = replace(dims, text_intermediate=text["layers.0.mlp.gate_proj.weight"].shape[0])
        channels = getattr(getattr(components.get("vae"), "config", None), "block_out_channels", None)
        if channels and "decoder.conv_in.weight" in vae:
            dims = replace(dims, vae_full_res_channels=max(channels[:2]), vae_encoder_channels=channels[0],
                           vae_scale=2 ** (len(channels) - 1),
                           vae_act_bytes=vae["decoder.conv_in.weight"].element_size())
        return dims


@dataclass(frozen=True)
class RequestShape:
    """The parts of a request that decide its memory: size, batch, CFG, reference image, caption length."""

    width: int
    height: int
    batch_size: int = 1
    guidance: float = 0.0
    reference_image: bool = False
    text_tokens: int = 512  # upper bound: max_sequence_length unless the caller counted the tokens
    tiled_vae: bool = False
    control_hints: int = 0  # ControlNet hints held during one transformer call (0: no ControlNet)

    @classmethod
    def from_request(cls, request: "GenerationRequest", text_tokens: int | None = None,
                     control_hints: int = 0) -> "RequestShape":
        encodes = request.reference_image is not None or request.control_image is not None
        return cls(width=request.width, height=request.height, batch_size=request.batch_size,
                   guidance=request.guidance, reference_image=encodes,
                   text_tokens=text_tokens if text_tokens is not None else request.max_sequence_length,
                   control_hints=control_hints if request.controlnet else 0)

    @property
    def uses_cfg(self) -> bool:
        return uses_cfg(self.guidance)


# What a memory mode must fit to be chosen: the product's promise, one 1024x1024 image (tiled VAE decode
# allowed, since admission switches to it on its own).
REFERENCE_REQUEST = RequestShape(width=1024, height=1024, tiled_vae=True)


@dataclass(frozen=True)
class VramEstimate:
    """Estimated peak bytes per stage; `total_bytes` is the largest."""

    stages: Mapping[str, int]

    @property
    def total_bytes(self) -> int:
        return max(self.stages.values())


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _weights_during(stage_components: tuple[str, ...], plan: "PlacementPlan",
                    footprints: Mapping[str, "Footprint"]) -> int:
    total = 0
    for name, footprint in footprints.items():
        placement = plan.component(name)
        total += (placement.device_bytes_in_use(footprint) if name in stage_components
                  else placement.device_bytes_between_uses(footprint))
    return total


def text_encoding_activations(shape: RequestShape, dims: ModelDims) -> int:
    """One prompt at a time: hidden states, MLP intermediates and per-head scores of one decoder layer."""
    tokens = shape.text_tokens
    per_token = 4 * dims.text_hidden + 3 * dims.text_intermediate
    return tokens * per_token * dims.text_act_bytes + dims.text_heads * tokens * tokens * 4


def denoising_activations(shape: RequestShape, dims: ModelDims, fp8: bool) -> int:
    """One transformer call over the unified sequence (CFG doubles the batch), at its widest point (FFN)."""
    batch = shape.batch_size * (2 if shape.uses_cfg else 1)
    image_tokens = (shape.height // (dims.vae_scale * dims.patch)) * (shape.width // (dims.vae_scale * dims.patch))
    seq = _round_up(image_tokens, SEQ_MULTIPLE) + _round_up(shape.text_tokens, SEQ_MULTIPLE)
    # FFN phase: block input, its normed copy and the residual (3 x D), w1/w3 outputs and their product (3 x F).
    widest = batch * seq * (3 * dims.dim + 3 * dims.ffn_dim) * dims.act_bytes
    rope_and_mask = batch * seq * (dims.dim // 2) * 4 + (batch * seq * seq if batch > 1 else 0)
    latents = 4 * shape.batch_size * 16 * (shape.height // dims.vae_scale) * (shape.width // dims.vae_scale) * 4
    dequantized_weight = dims.ffn_dim * dims.dim * dims.act_bytes if fp8 else 0
    # A ControlNet computes its hints before the layers they join and holds them (one stream each).
    hints = shape.control_hints * batch * seq * dims.dim * dims.act_bytes
    return widest + rope_and_mask + latents + dequantized_weight + hints


def vae_decode_activations(shape: RequestShape, dims: ModelDims) -> int:
    """Decoder peak: a few full-resolution feature maps of the widest full-resolution level, per image."""
    if shape.tiled_vae:
        tile = DEFAULT_TILE * dims.vae_scale
        pixels = min(shape.height * shape.width, tile * tile)  # one band of full-width rows
    else:
        pixels = shape.height * shape.width
    features = shape.batch_size * pixels * dims.vae_full_res_channels * VAE_LIVE_FULL_RES_TENSORS
    output = shape.batch_size * 3 * pixels * 4 * 2  # fp32 image and its clamped copy
    return features * dims.vae_act_bytes + output


def vae_encode_activations(shape: RequestShape, dims: ModelDims) -> int:
    """Encoder peak for the reference image (encoded once, at the output size)."""
    pixels = shape.height * shape.width
    return pixels * dims.vae_encoder_channels * VAE_LIVE_FULL_RES_TENSORS * dims.vae_act_bytes + 3 * pixels * 4


def estimate_peak(plan: "PlacementPlan", footprints: Mapping[str, "Footprint"], shape: RequestShape,
                  dims: ModelDims | None = None) -> VramEstimate:
    """Peak device bytes of `shape` under `plan`, per stage."""
    dims = dims or ModelDims()
    fp8 = plan.component("transformer").fp8
    stages = {
        "text_encoding": _weights_during(("text_encoder",), plan, footprints) + text_encoding_activations(shape, dims),
        # The ControlNet (when one is loaded) runs inside the transformer's calls.
        "denoising": _weights_during(("transformer", "controlnet"), plan, footprints)
        + denoising_activations(shape, dims, fp8),
        "vae_decode": _weights_during(("vae",), plan, footprints) + vae_decode_activations(shape, dims),
    }
    if shape.reference_image:
        stages["vae_encode"] = _weights_during(("vae",), plan, footprints) + vae_encode_activations(shape, dims)
    return VramEstimate({stage: bytes_ + WORKSPACE_BYTES for stage, bytes_ in stages.items()})


@dataclass(frozen=True)
class Admission:
    """Whether and how a request runs: as is, with tiled VAE decode, in smaller batch chunks, or not at all."""

    ok: bool
    needed_bytes: int
    available_bytes: int | None
    tiled_vae: bool = False
    batch_chunk: int | None = None  # run the batch as consecutive chunks of this many images (seeds unchanged)
    message: str = ""

    def raise_if_refused(self) -> None:
        if not self.ok:
            raise OutOfMemoryError(self.message)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _adaptations(shape: RequestShape):
    """Ways to run `shape`, cheapest change first: as is, tiled decode, then ever smaller batch chunks."""
    yield replace(shape, tiled_vae=False), None
    yield replace(shape, tiled_vae=True), None
    for chunk in range(shape.batch_size - 1, 0, -1):
        yield replace(shape, tiled_vae=True, batch_size=chunk), chunk


def check_request(plan: "PlacementPlan", footprints: Mapping[str, "Footprint"], shape: RequestShape,
                  available_bytes: int | None, dims: ModelDims | None = None) -> Admission:
    """Decide before running: fits as is, adapt (tiled VAE, batch chunks), or refuse with a clear message."""
    dims = dims or ModelDims()
    needed = estimate_peak(plan, footprints, shape, dims).total_bytes
    if available_bytes is None:
        return Admission(ok=True, needed_bytes=needed, available_bytes=None)
    for candidate, chunk in _adaptations(shape):
        estimate = estimate_peak(plan, footprints, candidate, dims)
        if estimate.total_bytes <= available_bytes:
            message = _adapted_message(candidate, chunk, shape)
            if message:
                logger.info("admission: %s (needs %s of %s)", message, _gib(estimate.total_bytes),
                            _gib(available_bytes))
            return Admission(ok=True, needed_bytes=estimate.total_bytes, available_bytes=available_bytes,
                             tiled_vae=candidate.tiled_vae and not shape.tiled_vae, batch_chunk=chunk,
                             message=message)
    return Admission(ok=False, needed_bytes=needed, available_bytes=available_bytes,
                     message=_refusal_message(plan, footprints, shape, needed, available_bytes, dims))


def _adapted_message(candidate: RequestShape, chunk: int | None, asked: RequestShape) -> str:
    parts = []
    if candidate.tiled_vae and not asked.tiled_vae:
        parts.append("decoding the image in tiles")
    if chunk is not None:
        parts.append(f"running the batch of {asked.batch_size} in chunks of {chunk}")
    return " and ".join(parts)


def _largest_fitting_square(plan, footprints, shape, available, dims) -> int | None:
    side = min(shape.width, shape.height) // 64 * 64
    while side >= 256:
        trial = replace(shape, width=side, height=side, batch_size=1, tiled_vae=True)
        if estimate_peak(plan, footprints, trial, dims).total_bytes <= available:
            return side
        side -= 64
    return None


def _refusal_message(plan, footprints, shape, needed, available, dims) -> str:
    what = (f"{shape.width}x{shape.height}, batch {shape.batch_size}"
            f"{', guidance ' + format(shape.guidance, 'g') if shape.uses_cfg else ''}"
            f"{', reference image' if shape.reference_image else ''}")
    advice = []
    if shape.batch_size > 1:
        advice.append("generate one image at a time")
    if shape.uses_cfg:
        advice.append("set guidance to 0 (no negative-prompt pass, half the activations)")
    side = _largest_fitting_square(plan, footprints, replace(shape, guidance=0.0), available, dims)
    if side is not None and side < min(shape.width, shape.height):
        advice.append(f"use a smaller size (about {side}x{side} fits)")
    if plan.mode != "low":
        advice.append("start the server with memory mode 'low' (fp8 transformer, streamed text encoder)")
    if not advice:
        advice.append("free GPU memory used by other processes or use a GPU with more memory")
    return (f"Not enough GPU memory for {what} in memory mode '{plan.mode}': it needs about {_gib(needed)}, "
            f"{_gib(available)} is available. To fix: {'; or '.join(advice)}.")
