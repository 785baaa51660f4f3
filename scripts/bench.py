"""Benchmarks: our engine against diffusers on the CPU, and the full-size model's memory modes on a GPU.

--compare-diffusers (CPU): writes one mid-size random model in the Hugging Face layout (transformer dim 768,
  12 heads, 8 layers; Qwen3 hidden 1024, 12 layers; a 16-channel VAE with block channels 128/256/256/256) and
  loads it in our Engine and in diffusers' ZImagePipeline, each in its own worker process. 512x512, 8 steps,
  fp32, a 40-token prompt, guidance 0. After one warm-up each, the sides run alternately; per-stage medians,
  ratios ours/diffusers and each process's peak resident memory (ru_maxrss: the high-water mark of the
  worker's RSS, covering imports, weights and every run) are printed, plus each run's process CPU time and
  the best-run ratios, which other load on a shared machine disturbs less than wall-clock medians
  (`--threads 1` steadies them further). diffusers is imported ONLY by that
  worker, lazily: it is the test oracle, never a dependency of the product. Our prompt cache is disabled so
  text encoding is really measured. Stage definitions are the same on both sides: text encoding = the
  prompt-encoding call, VAE = decode + post-processing, denoising = end-to-end minus those two.
--full-size (GPU): the real architecture with random bf16 weights materialized on the GPU (no download),
  1024x1024, 8 steps. By default the speed variants (`--variants`, default all: eager / compiled /
  compiled-fused, each bf16 and fp8): stage medians of `--repeats` runs, warm-up (compiling), peak VRAM,
  syncs per step and `--images` sequential images; `--compile-mode` is torch.compile's mode. Without CUDA
  it exits 2; `--dry-run` runs it on the CPU with the tiny architecture. `--modes full,balanced,low`
  instead measures the memory modes (per-stage latency, peak VRAM and our estimate; `--compile-blocks`
  with torch.compile'd blocks). JSON on stdout. That part lives in scripts/bench_full_size.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from model.network.config import TransformerConfig  # noqa: E402
from model.request import GenerationRequest  # noqa: E402
from model.network.vae import VAEConfig  # noqa: E402
from scripts.bench_common import PROMPT_TOKENS, STAGES, STEPS, prompt_of  # noqa: E402

logger = logging.getLogger("bench")

MID_TRANSFORMER = TransformerConfig(dim=768, n_heads=12, n_kv_heads=12, n_layers=8, n_refiner_layers=2,
                                    cap_feat_dim=1024, axes_dims=(16, 24, 24))
MID_QWEN = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=8, head_dim=64,
                intermediate_size=3072, rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
MID_VAE = VAEConfig(block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32)
CPU_SIZE = 512
CPU_STAGES = (*STAGES, "total_cpu")  # total_cpu: process CPU seconds, less sensitive to other load


def write_mid_model(root: Path) -> str:
    """The mid-size random model in the Hugging Face layout; returns a prompt of PROMPT_TOKENS tokens."""
    from transformers import Qwen3Config, Qwen3Model

    from model.network.transformer import ZImageTransformer
    from model.network.vae import FluxVAE

    from model import tiny_model as tiny  # its tokenizer and Hugging Face layout writer are reused
    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(0)
    te_config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **MID_QWEN)
    te_config.architectures = ["Qwen3Model"]
    te_sd = Qwen3Model(te_config).state_dict()
    transformer = ZImageTransformer(MID_TRANSFORMER)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if name.endswith("pad_token") or (param.ndim == 1 and "norm" in name):
                param.normal_(1.0 if "norm" in name else 0.0, 0.1)
    vae_sd = FluxVAE(MID_VAE).state_dict()
    tiny.write_hf(root, tokenizer, te_config, te_sd, MID_TRANSFORMER, transformer.state_dict(), vae_sd, MID_VAE)
    return prompt_of(tokenizer, PROMPT_TOKENS)


# ------------------------------------------------------------------------------------ CPU workers


class _OursWorker:
    """Our Engine, prompt cache off."""

    def __init__(self, root: Path):
        from model.engine import Engine

        self.engine = Engine.from_pretrained(root, device="cpu", dtype=torch.float32, memory_mode="full",
                                             max_cached_prompts=0)

    def run(self, prompt: str, seed: int, out: Path) -> dict[str, float]:
        started = time.perf_counter()
        result = self.engine.generate(GenerationRequest(prompt=prompt, width=CPU_SIZE, height=CPU_SIZE, steps=STEPS,
                                                        seed=seed))
        total = time.perf_counter() - started
        result.images[0].save(out)
        return {"text_encoding": result.timings["text_encoding"], "vae_decode": result.timings["vae_decode"],
                "total": total}


class _DiffusersWorker:
    """diffusers' ZImagePipeline (test oracle), with its prompt encoding and VAE decode timed by wrappers."""

    def __init__(self, root: Path):
        from diffusers import ZImagePipeline  # the oracle: only this worker ever imports diffusers

        self.pipe = ZImagePipeline.from_pretrained(root, torch_dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.spent: dict[str, float] = {}
        self.pipe.encode_prompt = self._timed(self.pipe.encode_prompt, "text_encoding")
        self.pipe.vae.decode = self._timed(self.pipe.vae.decode, "vae_decode")
        self.pipe.image_processor.postprocess = self._timed(self.pipe.image_processor.postprocess, "vae_decode")

    def _timed(self, fn, stage: str):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[stage] = self.spent.get(stage, 0.0) + time.perf_counter() - started
        return wrapper

    def run(self, prompt: str, seed: int, out: Path) -> dict[str, float]:
        self.spent = {}
        started = time.perf_counter()
        image = self.pipe(prompt=prompt, height=CPU_SIZE, width=CPU_SIZE, num_inference_steps=STEPS,
                          guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        total = time.perf_counter() - started
        image.save(out)
        return {**self.spent, "total": total}


def worker_main(side: str, root: Path, prompt: str) -> int:
    """Serve `run SEED` lines on stdin with one JSON line each; `quit` reports the peak RSS."""
    worker = (_OursWorker if side == "ours" else _DiffusersWorker)(root)
    print(json.dumps({"ready": side}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "quit":
            print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)
            return 0
        seed = int(rest[0])
        cpu_started = time.process_time()
        with torch.inference_mode():
            timings = worker.run(prompt, seed, root / f"{side}_{seed}.png")
        timings["denoising"] = timings["total"] - timings["text_encoding"] - timings["vae_decode"]
        timings["total_cpu"] = time.process_time() - cpu_started
        print(json.dumps(timings), flush=True)
    return 1


class _WorkerProcess:
    """A worker subprocess driven over stdin/stdout."""

    def __init__(self, side: str, root: Path, prompt: str, threads: int):
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", side, "--model-dir", str(root), "--prompt", prompt,
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # "ready"

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker exited (code {self.proc.wait()}); see its log above")
        return json.loads(line)

    def call(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _image_difference(root: Path, seed: int) -> int:
    import numpy as np
    from PIL import Image

    ours = np.asarray(Image.open(root / f"ours_{seed}.png"), dtype=np.int16)
    reference = np.asarray(Image.open(root / f"diffusers_{seed}.png"), dtype=np.int16)
    return int(np.abs(ours - reference).max())


def compare_diffusers(repeats: int, threads: int) -> int:
    with tempfile.TemporaryDirectory(prefix="zimage-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        prompt = write_mid_model(root)
        print(f"mid-size model written in {time.perf_counter() - started:.1f}s; prompt of {PROMPT_TOKENS} tokens: "
              f"{prompt!r}", flush=True)
        workers = {}
        try:
            for side in ("ours", "diffusers"):
                workers[side] = _WorkerProcess(side, root, prompt, threads)
            runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
            for side in workers:
                workers[side].call("run 0")  # warm-up
            for repeat in range(repeats):
                order = ("ours", "diffusers") if repeat % 2 == 0 else ("diffusers", "ours")
                for side in order:
                    runs[side].append(workers[side].call(f"run {repeat + 1}"))
                    print(f"run {repeat + 1} {side}: " + ", ".join(f"{k} {v:.2f}s" for k, v in runs[side][-1].items()),
                          flush=True)
            peaks = {side: worker.call("quit")["peak_rss_bytes"] for side, worker in workers.items()}
        finally:
            for worker in workers.values():
                worker.close()
        _report(runs, peaks, max(_image_difference(root, r + 1) for r in range(repeats)))
    return 0


def _report(runs: dict[str, list[dict]], peaks: dict[str, int], pixel_diff: int) -> None:
    """Medians (and, as a check against other load on a shared machine, the best run) per stage."""
    summary = {kind: {side: {stage: pick(r[stage] for r in side_runs) for stage in CPU_STAGES}
                      for side, side_runs in runs.items()}
               for kind, pick in (("median", statistics.median), ("best", min))}
    medians = summary["median"]
    print(f"\n{'stage':<15}{'ours (s)':>10}{'diffusers (s)':>15}{'ratio':>8}{'best-run ratio':>16}")
    for stage in CPU_STAGES:
        ours, reference = medians["ours"][stage], medians["diffusers"][stage]
        best = summary["best"]["ours"][stage] / summary["best"]["diffusers"][stage]
        print(f"{stage:<15}{ours:>10.2f}{reference:>15.2f}{ours / reference:>8.2f}{best:>16.2f}")
    print(f"{'peak RSS (GiB)':<15}{peaks['ours'] / 2**30:>10.2f}{peaks['diffusers'] / 2**30:>15.2f}"
          f"{peaks['ours'] / peaks['diffusers']:>8.2f}")
    print(f"medians of {len(runs['ours'])} alternating runs after one warm-up each (torch threads: "
          f"{torch.get_num_threads()}); largest pixel difference between the two sides' images for the same "
          f"seed: {pixel_diff}/255")
    print(json.dumps({**summary, "ratios": {s: medians["ours"][s] / medians["diffusers"][s] for s in CPU_STAGES},
                      "peak_rss_bytes": peaks, "max_pixel_difference": pixel_diff, "runs": runs}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--compare-diffusers", action="store_true", help="CPU: ours vs diffusers, mid-size model")
    what.add_argument("--full-size", action="store_true", help="GPU: real architecture, random weights, each mode")
    what.add_argument("--worker", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per side (--compare-diffusers) or per mode (--full-size); default 5")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="--compare-diffusers: torch threads of each worker (default: torch's default)")
    parser.add_argument("--modes", default="", help="--full-size: comma-separated memory modes to measure instead "
                        "of the speed variants (full, balanced, low)")
    parser.add_argument("--variants", default="all", help="--full-size: comma-separated speed variants or 'all'")
    parser.add_argument("--images", type=int, default=20, help="--full-size: sequential images for throughput")
    parser.add_argument("--compile-mode", default="default", help="--full-size: torch.compile mode of the "
                        "compiled variants (default, max-autotune-no-cudagraphs, reduce-overhead)")
    parser.add_argument("--dry-run", action="store_true",
                        help="--full-size: run the speed variants on the CPU at tiny size (checks the script only)")
    parser.add_argument("--compile-blocks", action="store_true",
                        help="--full-size: torch.compile the transformer blocks (warmup_s then includes compiling)")
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompt", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker_main(args.worker, args.model_dir, args.prompt)
    if args.compare_diffusers:
        return compare_diffusers(args.repeats, args.threads)
    from scripts.bench_full_size import VARIANTS, full_size, speed_variants

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if modes:
        return full_size(modes, args.repeats, args.compile_blocks)
    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    return speed_variants(variants, args.repeats, args.images, args.compile_mode, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
