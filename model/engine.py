"""Engine: the one API every part of the product calls to turn a GenerationRequest into images.

generate() runs these phases, each a method below:
validate -> encode prompt (cached) -> noise / reference latents -> sigmas -> denoise (per-step callback,
cancellable) -> VAE decode -> PIL images. Stage placement goes through model.memory.manager.MemoryManager only.

Precision: the transformer and text encoder run in the engine dtype (bf16 by default); latents, sigmas and
guidance math in fp32; the VAE in the engine dtype too unless `vae_dtype` says otherwise (diffusers'
pipeline decodes in its own dtype as well; a bf16 decode halves the VAE's activations, which is what lets
a 1024x1024 image decode whole beside the resident transformer on a 16 GB card). Above
`vae_tile_threshold`, or when the memory admission asks for it, the VAE works in bands (model.network.vae_tiling).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

import model
from model import sampler
from model.network.attention import get_attention_backend, set_attention_backend
from model.runtime.compile import compile_repeated_blocks, compile_transformer
from model.runtime.cpu_kernels import use_cpu_kernels
from model.control import conditioning, inpaint
from model.control.preprocess import preprocess
from model.control.validation import validate_control, validate_control_inputs
from model.errors import InvalidRequestError
from model.images import MAX_CROP_RATIO, cover_crop, crop_ratio, reference_tensor, to_pil_images, to_rgb
from model.loading.controlnet import load_controlnet
from model.loading.layout import WeightsLayout, detect_layout
from model.loading.text_encoder import load_text_encoder, load_tokenizer
from model.loading.transformer import load_transformer
from model.loading.vae import load_vae
from model.lora.manager import LoraManager
from model.memory.fp8 import use_dynamic_fp8
from model.memory.manager import MemoryManager
from model.memory.placement import RESIDENT
from model.request import (ENGINE_LIMITS, RANGED_FIELDS, EngineLimits, GenerationRequest, GenerationResult,
                           StepCallback, encoded_prompts, uses_cfg)
from model.sampling import catalog, seed_variety
from model.network.controlnet import ZImageControlNet
from model.network.text_encoder import PromptEncoder, PromptFeatures
from model.network.transformer import SEQ_MULTIPLE, ZImageTransformer
from model.network.vae import DEFAULT_TILE, FluxVAE
from model.memory.vram import Admission

logger = logging.getLogger(__name__)

WARMUP_REQUEST = GenerationRequest(prompt="warm-up", width=256, height=256, steps=1, seed=0)
WARMUP_PROMPTS = ("warm-up", "warm-up " * 40)  # captions of different multiples of 32 tokens


class Engine:
    """Loaded Z-Image-Turbo pipeline: text encoder, transformer, VAE, sampler, memory placement."""

    def __init__(self, layout: WeightsLayout, prompt_encoder: PromptEncoder, transformer: ZImageTransformer,
                 vae: FluxVAE, memory: MemoryManager, dtype: torch.dtype):
        self.layout = layout
        self.prompt_encoder = prompt_encoder
        self.transformer = transformer
        self.vae = vae
        self.memory = memory
        self.dtype = dtype
        self.loras = LoraManager(transformer)  # the per-request LoRA set (model.lora.manager)
        self._controlnet_key: tuple | None = None  # (path, size, mtime) of the ControlNet in memory
        # Latent side (h or w) above which the VAE works in bands; default: beyond 1024 px.
        self.vae_tile_threshold = 128

    @property
    def device(self) -> torch.device:
        return self.memory.device

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.bfloat16,
        memory_mode: str = "full",
        attention_backend: str = "auto",
        max_cached_prompts: int = 32,
        compile_blocks: bool = False,
        vae_dtype: torch.dtype | None = None,
        fuse_projections: bool = False,
        compile_mode: str | None = None,
        fp8_matmul: str = "weight-only",
    ) -> "Engine":
        """Load weights from an HF snapshot folder or a ComfyUI three-file folder (see model.loading.layout)."""
        layout = detect_layout(path)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but this PyTorch sees no CUDA GPU; use device='cpu'")
        set_attention_backend(attention_backend)
        started = time.perf_counter()
        # Components are built on the CPU; the memory manager alone decides what goes to the device.
        text_model = load_text_encoder(layout.text_encoder, dtype=dtype)
        tokenizer = load_tokenizer(layout.tokenizer)
        transformer = load_transformer(layout.transformer, dtype=dtype, fuse=fuse_projections)
        vae = load_vae(layout.vae, dtype=vae_dtype or dtype)
        components = {"text_encoder": text_model, "transformer": transformer, "vae": vae}
        if device.type == "cpu":  # oneDNN float32 linears, channels-last convolutions (model.runtime.cpu_kernels)
            switched = sum(use_cpu_kernels(component) for component in components.values())
            if switched:  # 0 where the choices do not apply (not x86-64, or no mkldnn)
                logger.info("CPU kernels: %d linear layers use oneDNN for float32, convolutions are channels-last",
                            switched)
        memory = MemoryManager(memory_mode, device, components)
        if fp8_matmul == "dynamic":  # fp8 GEMM (model.memory.fp8): low mode's layers, or all when resident
            use_dynamic_fp8(transformer, device, quantize=memory.plan.component("transformer").residency == RESIDENT)
        if compile_blocks:  # optional torch.compile of the repeated blocks (model.runtime.compile); off by default
            compile_repeated_blocks(transformer)
        if compile_mode is not None:  # or of the whole step as one graph; Engine.warmup(sizes) compiles ahead
            compile_transformer(transformer, mode=compile_mode)
        logger.info("engine loaded from %s (%s layout) in %.1fs", layout.root, layout.kind,
                    time.perf_counter() - started)
        return cls(layout, PromptEncoder(tokenizer, text_model, max_cached_prompts), transformer, vae, memory, dtype)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """Run one request end to end; raises InvalidRequestError, GenerationCancelled, CheckpointError.

        Steps are transformer calls (CFG batches positive and negative into the same call). With a
        reference image, the image is scaled (aspect kept) to cover width x height and centre-cropped to
        exactly that size, encoded with the VAE posterior mode, and noised to the schedule's sigma at
        index int(steps - steps*strength): strength 1 ignores its content, 0.6 of 8 steps makes 5 calls.
        With a mask too (white = repaint), every step puts the reference back outside the mask, noised
        to the sigma reached (model.control.inpaint). With a ControlNet, its hints join the transformer
        (model.network.controlnet); a 2.x ControlNet also gets the mask and the masked reference.
        Image i of a batch uses seed + i. on_step gets StepProgress after every call; if it raises
        (GenerationCancelled), the run stops there and no image is made.
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        self._validate(request)
        request = self._fit_caption_capacity(request)
        controlnet = self._controlnet(request)  # before admission: its weights count
        admission = self._admit(request)  # before any work: refuse or adapt instead of running out of memory
        self.loras.activate(request.loras)  # before any transformer work; logs a report per LoRA
        with torch.inference_mode():
            with _timed(timings, "text_encoding"):
                positive, negative = self._encode_prompts(request)
            sigmas = self._sigmas(request)
            latents, noise, clean = self._initial_latents(request, sigmas[0], timings)
            repaint = self._repaint_mask(request)
            control = None if controlnet is None else self._control_context(request, controlnet, repaint, timings)
            chunk = admission.batch_chunk or request.batch_size  # smaller chunks only when memory says so
            blends = ([None] * len(latents.split(chunk)) if repaint is None
                      else inpaint.LatentBlend(repaint.to(self.device), clean, noise).split(chunk))
            with _timed(timings, "denoising"):
                parts = [self._denoise(request, part, sigmas, positive, negative, on_step, request.seed + start,
                                       control, blend)
                         for start, part, blend in zip(range(0, request.batch_size, chunk), latents.split(chunk),
                                                       blends)]
            with _timed(timings, "vae_decode"):
                images = [image for part in parts for image in self._decode(part, admission.tiled_vae)]
        timings["total"] = time.perf_counter() - started
        return GenerationResult(
            images=images,
            seeds=[request.seed + i for i in range(request.batch_size)],
            prompt_tokens=positive.token_count,
            prompt_truncated=positive.truncated,
            timings=timings,
        )

    def count_tokens(self, prompt: str) -> int:
        """Tokens of `prompt` including the chat template, before truncation."""
        return self.prompt_encoder.count_tokens(prompt)

    def describe(self) -> dict:
        """Layout, weight files, dtype, device, attention backend, memory mode, version, loaded ControlNet."""
        cfg = self.transformer.config
        return {
            "layout": self.layout.kind,
            "path": str(self.layout.root),
            "weights": self.layout.files(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "vae_dtype": str(self.vae.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attention_backend": get_attention_backend(),
            "memory_mode": self.memory.mode,
            "version": model.__version__,
            "transformer": {"dim": cfg.dim, "layers": cfg.n_layers, "heads": cfg.n_heads},
            "max_side": self.max_side(),
            "controlnet": self._describe_controlnet(),
        }

    def _describe_controlnet(self) -> dict | None:
        """The ControlNet in memory (the last one a request named): file, version, inputs, placement."""
        net = self.memory.components.get("controlnet")
        if net is None or self._controlnet_key is None:
            return None
        return {"path": self._controlnet_key[0], "version": net.layout.label, "inpainting": net.layout.takes_mask,
                "residency": self.memory.plan.component("controlnet").residency}

    @property
    def limits(self) -> EngineLimits:
        """ENGINE_LIMITS with this checkpoint's largest side and prompt-token capacity."""
        return dataclasses.replace(ENGINE_LIMITS, max_side=self.max_side(),
                                   max_prompt_tokens=caption_capacity(self.transformer.config.axes_lens))

    def max_side(self) -> int:
        """Largest width/height in pixels the RoPE tables can address."""
        return min(self.transformer.config.axes_lens[1:]) * self._pixel_multiple()

    def warmup(self, sizes: Sequence[tuple[int, int]] = ()) -> None:
        """Tiny generations so the first user image is fast (kernels, allocator, caches, compilation).

        With `sizes` ((width, height) pixels), each size runs with two prompts of different caption
        lengths: a compiled step (compile_mode) then has its caption length dynamic, so no user waits
        for a compilation at these sizes whatever the prompt (model.runtime.compile).
        """
        started = time.perf_counter()
        requests = [replace(WARMUP_REQUEST, width=width, height=height, steps=2, prompt=prompt)
                    for width, height in sizes for prompt in WARMUP_PROMPTS] or [WARMUP_REQUEST]
        for request in requests:
            self.generate(request)
        logger.info("warm-up (%d generations) took %.2fs", len(requests), time.perf_counter() - started)

    # ----------------------------------------------------------------------------------- phases

    def _validate(self, request: GenerationRequest) -> None:
        validate_request(request, self._pixel_multiple(), self.transformer.config.axes_lens)
        validate_control(request)

    def _controlnet(self, request: GenerationRequest) -> ZImageControlNet | None:
        """The request's ControlNet, loaded (and placed) when it is not the one already in memory."""
        if request.controlnet is None:
            return None
        path = Path(request.controlnet)
        try:
            stat = path.stat()
        except OSError as exc:
            raise InvalidRequestError(f"controlnet file {path} cannot be read ({exc.strerror}); pick an "
                                      "existing ControlNet Union .safetensors file", field="controlnet") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key != self._controlnet_key:
            self.memory.remove("controlnet")
            self._controlnet_key = None
            net = load_controlnet(path, self.transformer.config, dtype=self.dtype)
            self.memory.add_controlnet(net)
            self._controlnet_key = key
        net = self.memory.components["controlnet"]
        validate_control_inputs(request, net.layout)
        return net

    def _fit_caption_capacity(self, request: GenerationRequest) -> GenerationRequest:
        """The request with max_sequence_length lowered to what the RoPE table holds, when every prompt's real
        token count fits there (so nothing is cut that the cap would have kept); else the prompt is refused."""
        capacity = caption_capacity(self.transformer.config.axes_lens)
        if request.max_sequence_length <= capacity:
            return request
        for field, text in encoded_prompts(request).items():
            tokens = self.count_tokens(text)
            _check(tokens <= capacity, field,
                   f"{field} has {tokens} tokens but this checkpoint holds at most {capacity} caption tokens; "
                   f"shorten it, or set max_sequence_length <= {capacity} to truncate it")
        return dataclasses.replace(request, max_sequence_length=capacity)

    def _pixel_multiple(self) -> int:
        return self.vae.downscale * self.transformer.config.all_patch_size[0]

    def _encode_prompts(self, request: GenerationRequest) -> tuple[PromptFeatures, PromptFeatures | None]:
        with self.memory.use("text_encoder"):
            positive = self.prompt_encoder.encode(request.prompt, request.max_sequence_length)
            negative = None
            if uses_cfg(request.guidance):
                negative = self.prompt_encoder.encode(request.negative_prompt, request.max_sequence_length)
        return positive, negative  # a truncation is logged by the encoder and reported in the result

    def _sigmas(self, request: GenerationRequest) -> torch.Tensor:
        sigmas = sampler.shifted_sigmas(request.steps, request.shift)
        if request.reference_image is None:
            return sigmas
        return sigmas[sampler.img2img_start_index(request.steps, request.strength):]

    def _initial_latents(self, request: GenerationRequest, sigma_start: torch.Tensor, timings: dict[str, float]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(start latents, seeded noise, reference latents or None): with a reference image, its latents
        noised to the first sigma (img2img)."""
        scale = self.vae.downscale
        shape = (self.vae.config.latent_channels, request.height // scale, request.width // scale)
        noise = sampler.seeded_noise(request.seed, request.batch_size, shape).to(self.device)
        if request.reference_image is None:
            return noise, noise, None
        with _timed(timings, "vae_encode"):
            clean = self._encode_reference(request.reference_image, request.width, request.height)
        return sampler.noise_latents(clean, noise, sigma_start.to(self.device)), noise, clean

    def _repaint_mask(self, request: GenerationRequest) -> torch.Tensor | None:
        """The request's mask on the latent grid [1,1,h,w] (1 = repaint), or None."""
        if request.mask is None:
            return None
        scale = self.vae.downscale
        pixels = inpaint.pixel_mask(request.mask, request.width, request.height)
        return inpaint.latent_mask(pixels, request.height // scale, request.width // scale)

    def _control_context(self, request: GenerationRequest, controlnet: ZImageControlNet,
                         repaint: torch.Tensor | None, timings: dict[str, float]) -> torch.Tensor:
        """The ControlNet input [C,1,h,w]: the preprocessed control image's latents, and for 2.x the
        keep-mask and the masked reference's latents (model.control.conditioning)."""
        width, height, scale = request.width, request.height, self.vae.downscale
        control = keep = masked = None
        with _timed(timings, "control_encode"):
            if request.control_image is not None:
                cropped = cover_crop(to_rgb(request.control_image), width, height)
                control = self._encode_pixels(reference_tensor(preprocess(request.control_mode, cropped),
                                                               width, height))
            if controlnet.layout.takes_mask and repaint is not None:
                keep = 1 - repaint
                pixels = conditioning.masked_pixels(reference_tensor(request.reference_image, width, height),
                                                    inpaint.pixel_mask(request.mask, width, height))
                masked = self._encode_pixels(pixels)
        return conditioning.control_context(controlnet.layout.in_channels, (height // scale, width // scale),
                                            self.device, control, keep, masked)

    def _encode_reference(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """Reference -> normalised latents [1,16,h,w] via the posterior mode (deterministic: the noise is
        the only random stream, so a seed means the same thing as in text-to-image)."""
        return self._encode_pixels(reference_tensor(image, width, height))

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [1,3,H,W] in [-1, 1] -> normalised latents [1,16,h,w] (posterior mode)."""
        height, width = pixels.shape[-2:]
        with self.memory.use("vae") as vae:
            if self._needs_tiles(height // vae.downscale, width // vae.downscale):
                return vae.encode(pixels, tile=DEFAULT_TILE).to(self.device)  # bands: bounded device memory
            return vae.encode(pixels.to(self.device))

    def _denoise(self, request: GenerationRequest, latents: torch.Tensor, sigmas: torch.Tensor,
                 positive: PromptFeatures, negative: PromptFeatures | None, on_step: StepCallback | None,
                 first_seed: int, control: torch.Tensor | None = None,
                 blend: inpaint.LatentBlend | None = None) -> torch.Tensor:
        seeds = [first_seed + i for i in range(latents.shape[0])]
        with self.memory.use("transformer") as transformer, self._control_branch(transformer, control,
                                                                                   request.control_scale) as branch:
            velocity = _TransformerVelocity(transformer, [positive.features] * len(seeds), negative, branch)
            varied = None
            if request.seed_variety > 0:  # per-image perturbed prompt for the early steps
                varied = _TransformerVelocity(transformer, [seed_variety.vary_features(
                    positive.features, seed, request.seed_variety) for seed in seeds], negative, branch)
            return sampler.denoise(
                velocity, latents, sigmas, guidance=request.guidance, cfg_truncation=request.cfg_truncation,
                cfg_normalization=request.cfg_normalization, on_step=on_step, sampler=request.sampler,
                noise_seeds=seeds, early_velocity=varied, early_steps=seed_variety.early_steps(len(sigmas) - 1),
                after_step=blend,
            )

    @contextmanager
    def _control_branch(self, transformer: ZImageTransformer, control: torch.Tensor | None,
                        scale: float) -> Iterator[object]:
        """The ControlNet on the device with its branch for `control` latents, or None without one."""
        if control is None:
            yield None
            return
        with self.memory.use("controlnet") as controlnet:
            yield controlnet.branch(transformer, control, scale)

    def _admit(self, request: GenerationRequest) -> Admission:
        """Estimated peak device memory of `request` against what is free: OutOfMemoryError when it
        cannot run; otherwise whether to decode in tiles and in what batch chunks (model.memory.vram)."""
        tokens = min(max(self.count_tokens(p) for p in encoded_prompts(request).values()),
                     request.max_sequence_length)
        admission = self.memory.admit(request, tokens)
        admission.raise_if_refused()
        return admission

    def _decode(self, latents: torch.Tensor, tiled: bool = False) -> list[Image.Image]:
        with self.memory.use("vae") as vae:
            if tiled or self._needs_tiles(*latents.shape[-2:]):
                decoded = vae.decode_tiled(latents, tile=DEFAULT_TILE)
            else:
                decoded = vae.decode(latents)
        return to_pil_images(decoded)

    def _needs_tiles(self, latent_height: int, latent_width: int) -> bool:
        return max(latent_height, latent_width) > self.vae_tile_threshold


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(message, field=field)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # rejects NaN


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Why a value is what it is, appended to the range error of that field.
_RANGE_HINTS = {
    "steps": " (Turbo uses 8)",
    "guidance": " (0 = off, the Turbo default)",
    "strength": " (1 = ignore the reference image's content)",
    "cfg_truncation": " (1 = never truncate)",
    "seed_variety": " (0 = off)",
    "cfg_normalization": " (0 = off)",
}


def caption_capacity(axes_lens: tuple[int, ...]) -> int:
    """Most caption tokens the RoPE table holds: positions start at 1 and the image follows at Lc + 1,
    which must stay inside axes_lens[0]; captions are padded to SEQ_MULTIPLE."""
    return ((axes_lens[0] - 2) // SEQ_MULTIPLE) * SEQ_MULTIPLE


def _validate_size(request: GenerationRequest, multiple: int, axes_lens: tuple[int, ...]) -> None:
    for field, value, axis_len in (("width", request.width, axes_lens[2]), ("height", request.height, axes_lens[1])):
        _check(_is_whole(value) and value > 0 and value % multiple == 0,
               field, f"{field} must be a positive multiple of {multiple} pixels, got {value!r}; "
                      f"round it to a multiple of {multiple} (e.g. 1024)")
        limit = axis_len * multiple
        _check(value <= limit, field, f"{field} {value} is larger than this model can address ({limit} pixels)")


def _validate_ranges(request: GenerationRequest, limits: EngineLimits) -> None:
    """Every ranged field against `limits` (whole numbers where the field is an int)."""
    for name in RANGED_FIELDS:
        value, (low, high) = getattr(request, name), limits.range(name)
        whole = isinstance(low, int)
        kind = "a whole number from" if whole else "from"
        _check((_is_whole(value) if whole else _is_number(value)) and low <= value <= high, name,
               f"{name} must be {kind} {low} to {high}, got {value!r}{_RANGE_HINTS.get(name, '')}")
    _check(request.seed + request.batch_size - 1 <= limits.seed[1], "seed",
           f"seed + batch_size - 1 must be at most {limits.seed[1]}, got {request.seed!r}")


def validate_request(request: GenerationRequest, multiple: int, axes_lens: tuple[int, ...]) -> None:
    """Raise InvalidRequestError(field=...) for the first field the model cannot honour."""
    _check(isinstance(request.prompt, str) and request.prompt.strip() != "", "prompt",
           "prompt is empty; describe the image you want")
    _check(isinstance(request.negative_prompt, str), "negative_prompt", "negative_prompt must be text")
    _validate_size(request, multiple, axes_lens)
    _validate_ranges(request, ENGINE_LIMITS)
    catalog.check_sampler(request.sampler)
    # Above the checkpoint's caption capacity is fine when the prompts are shorter (Engine._fit_caption_capacity).
    _check(_is_whole(request.max_sequence_length) and request.max_sequence_length >= 1, "max_sequence_length",
           f"max_sequence_length must be a whole number >= 1, got {request.max_sequence_length!r}")
    reference = request.reference_image
    _check(reference is None or isinstance(reference, Image.Image),
           "reference_image", "reference_image must be a PIL image (decode the upload first)")
    if reference is not None:
        ratio = crop_ratio(reference.size, (request.width, request.height))
        _check(ratio <= MAX_CROP_RATIO, "reference_image",
               f"reference_image {reference.width}x{reference.height} differs {ratio:.0f}-fold in shape from "
               f"{request.width}x{request.height} (at most {MAX_CROP_RATIO:g}); crop it closer to the output's shape")


class _TransformerVelocity:
    """Velocity callable for the sampler: one transformer call on prepared caption contexts."""

    def __init__(self, transformer: ZImageTransformer, positives: list[torch.Tensor],
                 negative: PromptFeatures | None, control: object | None = None):
        self.transformer = transformer
        self.control = control  # a ControlBranch (model.network.controlnet) or None
        self.captions = {False: positives}  # one caption per sample
        if negative is not None:
            self.captions[True] = positives + [negative.features] * len(positives)
        self._contexts: dict[bool, object] = {}  # prepared lazily: CFG truncation may never need one

    def __call__(self, x: torch.Tensor, t: torch.Tensor, guided: bool) -> torch.Tensor:
        if guided not in self._contexts:
            self._contexts[guided] = self.transformer.prepare_context(self.captions[guided])
        inputs = list(x.to(self.transformer.dtype).unsqueeze(2).unbind(0))  # B x (16, 1, h, w)
        out = self.transformer(inputs, t, context=self._contexts[guided], control=self.control)
        return torch.stack(out).squeeze(2).float()


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    if torch.cuda.is_initialized():  # GPU work is asynchronous: a stage ends when its kernels do
        torch.cuda.synchronize()
    timings[name] = time.perf_counter() - started
