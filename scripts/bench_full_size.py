"""`scripts/bench.py --full-size`: the real architecture with random bf16 weights on a GPU.

Weights are materialized directly on the GPU (meta-built modules, then normal_), so nothing is downloaded
and setup takes seconds. Two measurements:
- speed variants (the default): eager / compiled (the whole step as one graph, model.runtime.compile) /
  compiled + fused projections, each in bf16 and with the fp8 GEMM (model.memory.fp8 "dynamic"), memory
  mode full, 1024x1024, 8 steps: device-synchronized stage medians, the warm-up (which includes
  compiling), peak VRAM, host syncs per step, and the time of N sequential images (throughput).
  `--dry-run` runs the same code on the CPU with the tiny architecture (the test suite does, so the
  script cannot rot); its figures mean nothing.
- `--modes full,balanced,low`: the memory modes (balanced and low with the budget of a 16 GB and a 12 GB
  card): per-stage latency, peak VRAM and our estimate of it, the plan.
A failing variant or mode reports its error and the others still run.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import sys
import time
from dataclasses import replace

from dataclasses import dataclass, field

import torch

from model import tiny_model
from model.memory.fp8 import use_dynamic_fp8
from model.runtime.compile import compile_repeated_blocks, compile_transformer
from model.network.config import TransformerConfig
from model.request import GenerationRequest
from model.network.vae import VAEConfig
from model.tiny_model import build_tokenizer
from scripts.bench_common import PROMPT_TOKENS, STAGES, STEPS, prompt_of

logger = logging.getLogger("bench.full_size")

GPU_SIZE = 1024
FULL_SIZE_BUDGETS_GIB = {"full": None, "balanced": 15.5, "low": 11.5}  # what a 16 GB / 12 GB card leaves free
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=35,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                max_position_embeddings=40960, rope_parameters={"rope_type": "default", "rope_theta": 1e6})


@dataclass(frozen=True)
class Variant:
    """One speed configuration of the transformer."""

    compiled: bool
    fused: bool
    fp8: bool


VARIANTS = {
    f"{'compiled-fused' if fused else 'compiled' if compiled else 'eager'}-{'fp8' if fp8 else 'bf16'}":
        Variant(compiled, fused, fp8)
    for fp8 in (False, True) for compiled, fused in ((False, False), (True, False), (True, True))
}


@dataclass(frozen=True)
class Scale:
    """What is built and how it is run: the real model on CUDA, or the tiny one on the CPU (dry run)."""

    device: str
    size: int
    steps: int
    transformer: TransformerConfig
    qwen: dict = field(default_factory=lambda: dict(QWEN3_4B))
    vae: VAEConfig = field(default_factory=VAEConfig)
    compile_backend: str = "inductor"
    dtype: torch.dtype = torch.bfloat16


def full_scale() -> Scale:
    return Scale(device="cuda", size=GPU_SIZE, steps=STEPS, transformer=TransformerConfig())


def dry_run_scale(vocab_size: int) -> Scale:
    """The tiny architecture on the CPU in float32 (CPU bf16 convolutions are slow), compiled with the
    'eager' backend (graph capture, no code generation)."""
    qwen = dict(tiny_model.QWEN, vocab_size=vocab_size)
    return Scale(device="cpu", size=64, steps=2, qwen=qwen, vae=tiny_model.VAE, compile_backend="eager",
                 dtype=torch.float32, transformer=TransformerConfig(cap_feat_dim=qwen["hidden_size"], **tiny_model.TRANSFORMER))


def _materialize(module: torch.nn.Module, device: torch.device, std: float = 0.02) -> torch.nn.Module:
    """Meta-built module -> random weights on `device` (norm weights near 1 so activations stay sane)."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1 and "norm" in name:
                param.normal_(1.0, 0.05)
            else:
                param.normal_(0.0, std)
    return module


def _full_size_components(device: torch.device, transformer=None, scale: Scale | None = None, fused: bool = False):
    from transformers import Qwen3Config, Qwen3Model
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    from model.network.transformer import ZImageTransformer
    from model.network.vae import FluxVAE

    scale = scale or full_scale()
    config = Qwen3Config(**scale.qwen)
    with torch.device("meta"):
        text = Qwen3Model(config).to(scale.dtype)  # as loaded: 35 of 36 layers, no final norm
        text.norm = torch.nn.Identity()
        if transformer is None:
            transformer = ZImageTransformer(scale.transformer, fused=fused).to(scale.dtype)
        vae = FluxVAE(scale.vae).to(scale.dtype)  # the engine decodes in its own dtype
    text = _materialize(text, device).eval()
    text.rotary_emb = Qwen3RotaryEmbedding(config).to(device)  # non-persistent buffer: rebuilt, not random
    if next(transformer.parameters()).device.type == "meta":
        transformer = _materialize(transformer, device, std=0.01).eval()
    return {"text_encoder": text, "transformer": transformer, "vae": _materialize(vae, device).eval()}


def _count_syncs(engine, request: GenerationRequest) -> int:
    """Host-device synchronizations during one generation (CUDA sync debug mode, as warnings)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.generate(request)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _syncs_per_step(engine, request: GenerationRequest) -> float:
    """Synchronizations that grow with the step count (the step loop should have none)."""
    few, many = (_count_syncs(engine, replace(request, steps=n)) for n in (4, 8))
    return (many - few) / 4


def _run_mode(mode: str, components, tokenizer, device, runs: int) -> dict:
    from model.engine import Engine
    from model.memory.manager import MemoryManager
    from model.network.text_encoder import PromptEncoder
    from model.memory.vram import RequestShape, estimate_peak

    budget = FULL_SIZE_BUDGETS_GIB[mode]
    memory = MemoryManager(mode, device, components, budget_bytes=None if budget is None else int(budget * 2**30))
    prompt_encoder = PromptEncoder(tokenizer, components["text_encoder"], max_cached=0)
    engine = Engine(None, prompt_encoder, components["transformer"], components["vae"], memory, torch.bfloat16)
    request = GenerationRequest(prompt=prompt_of(tokenizer, PROMPT_TOKENS), width=GPU_SIZE, height=GPU_SIZE,
                                steps=STEPS)
    started = time.perf_counter()
    engine.generate(request)  # warm-up: kernels, allocator, cuDNN autotuning, compilation with compile_blocks
    torch.cuda.synchronize()
    warmup = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    timings = []
    for seed in range(runs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = engine.generate(replace(request, seed=seed))
        torch.cuda.synchronize()
        # The engine synchronizes the device at the end of each stage, so its stage times are GPU times.
        timings.append({**result.timings, "total": time.perf_counter() - started})
    tokens = engine.count_tokens(request.prompt)
    estimate = estimate_peak(memory.plan, memory.footprints, RequestShape.from_request(request, tokens), memory.dims)
    return {"plan": memory.plan.describe(), "runs": runs, "warmup_s": warmup,
            "syncs_per_step": _syncs_per_step(engine, request),
            "median_s": {k: statistics.median(t[k] for t in timings) for k in STAGES},
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30,
            "estimated_peak_gib": estimate.total_bytes / 2**30,
            "estimated_stages_gib": {k: v / 2**30 for k, v in estimate.stages.items()}}


def full_size(modes: list[str], runs: int, compile_blocks: bool = False) -> int:
    if not torch.cuda.is_available():
        print("--full-size needs a CUDA GPU (none is visible to torch); use --compare-diffusers on a CPU machine",
              file=sys.stderr)
        return 2
    unknown = [m for m in modes if m not in FULL_SIZE_BUDGETS_GIB]
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {', '.join(FULL_SIZE_BUDGETS_GIB)}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    tokenizer = build_tokenizer()
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "size": GPU_SIZE,
              "steps": STEPS, "dtype": "bfloat16", "compile_blocks": compile_blocks, "modes": {}}
    transformer = None
    # "low" quantizes the transformer in place, so it runs last; the others reuse one transformer.
    for mode in sorted(modes, key=lambda m: m == "low"):
        started = time.perf_counter()
        components = None
        try:
            components = _full_size_components(device, transformer)
            if compile_blocks and transformer is None:  # in place, once: later modes reuse the compiled blocks
                compile_repeated_blocks(components["transformer"])
            transformer = components["transformer"]
            setup = time.perf_counter() - started
            report["modes"][mode] = {"setup_s": setup, **_run_mode(mode, components, tokenizer, device, runs)}
        except Exception as exc:  # one broken mode must not hide the others' figures
            logger.exception("mode %s failed", mode)
            report["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{mode}: {json.dumps(report['modes'][mode])}", file=sys.stderr, flush=True)
        del components
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))
    return 1 if any("error" in result for result in report["modes"].values()) else 0


# ------------------------------------------------------------------------------------ speed variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_generation(engine, request: GenerationRequest, device: torch.device) -> dict[str, float]:
    _sync(device)
    started = time.perf_counter()
    result = engine.generate(request)
    _sync(device)
    # The engine synchronizes the device at the end of each stage, so its stage times are GPU times.
    return {**result.timings, "total": time.perf_counter() - started}


def _run_variant(variant: Variant, scale: Scale, tokenizer, runs: int, images: int, compile_mode: str) -> dict:
    from model.engine import Engine
    from model.memory.manager import MemoryManager
    from model.network.text_encoder import PromptEncoder

    device = torch.device(scale.device)
    started = time.perf_counter()
    components = _full_size_components(device, scale=scale, fused=variant.fused)
    transformer = components["transformer"]
    if variant.fp8:
        use_dynamic_fp8(transformer, device, quantize=True)
    memory = MemoryManager("full", device, components)
    if variant.compiled:
        compile_transformer(transformer, mode=compile_mode, backend=scale.compile_backend)
    engine = Engine(None, PromptEncoder(tokenizer, components["text_encoder"], max_cached=0), transformer,
                    components["vae"], memory, scale.dtype)
    request = GenerationRequest(prompt=prompt_of(tokenizer, PROMPT_TOKENS), width=scale.size, height=scale.size,
                                steps=scale.steps)
    setup = time.perf_counter() - started
    warmup = _timed_generation(engine, request, device)["total"]  # compiles the step for this shape
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = [_timed_generation(engine, replace(request, seed=seed), device) for seed in range(runs)]
    _sync(device)
    started = time.perf_counter()
    for seed in range(images):  # one after another, as a queue of single-image requests is served
        engine.generate(replace(request, seed=100 + seed))
    _sync(device)
    sequential = time.perf_counter() - started
    median = {k: statistics.median(t[k] for t in timings) for k in STAGES}
    return {"setup_s": setup, "warmup_s": warmup, "runs": runs, "median_s": median,
            "denoising_ms_per_step": 1000 * median["denoising"] / scale.steps,
            "sequential_images": images, "sequential_s": sequential, "images_per_s": images / sequential,
            "peak_vram_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "syncs_per_step": _syncs_per_step(engine, request) if device.type == "cuda" else None}


def speed_variants(names: list[str], runs: int, images: int, compile_mode: str, dry_run: bool = False) -> int:
    """Run the named VARIANTS one after another (each builds its own model); JSON report on stdout."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not dry_run and not torch.cuda.is_available():
        print("--full-size needs a CUDA GPU (none is visible to torch); use --dry-run to check the script on the "
              "CPU, or --compare-diffusers on a CPU machine", file=sys.stderr)
        return 2
    tokenizer = build_tokenizer()
    scale = dry_run_scale(len(tokenizer)) if dry_run else full_scale()
    device = torch.device(scale.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "size": scale.size, "steps": scale.steps,
              "dtype": str(scale.dtype).removeprefix("torch."), "compile_mode": compile_mode, "variants": {}}
    for name in names:
        try:
            report["variants"][name] = _run_variant(VARIANTS[name], scale, tokenizer, runs, images, compile_mode)
        except Exception as exc:  # one broken variant must not hide the others' figures
            logger.exception("variant %s failed", name)
            report["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {json.dumps(report['variants'][name])}", file=sys.stderr, flush=True)
        torch._dynamo.reset()  # compiled graphs hold the previous variant's weights alive
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))
    return 1 if any("error" in result for result in report["variants"].values()) else 0
