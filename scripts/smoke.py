"""Smoke run: load the configured weights exactly as the app does, generate one image, print stage timings.

    python scripts/smoke.py                                   # settings from configs/app.toml + ZIMAGE_*
    ZIMAGE_WEIGHTS_DIR=/data/zimage python scripts/smoke.py --size 1024x1024 --prompt "一只猫 a cat"

Use it after setup (is the GPU, the weights folder, the memory mode right?) without the web server.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # scripts/ is not a package; the app and the model live next to it

from app.engine_loader import engine_factory  # noqa: E402
from app.errors import ServiceError  # noqa: E402
from app.settings import SettingsError, load_settings  # noqa: E402
from model.errors import ZImageError  # noqa: E402
from model.request import GenerationRequest  # noqa: E402

STAGES = ("text_encoding", "vae_encode", "denoising", "vae_decode", "total")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="一只橘猫坐在窗台上，旁边写着“你好” / an orange cat on a windowsill")
    parser.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT, multiples of 16")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-warmup", action="store_true", help="time the first (cold) generation instead")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: <output_dir>/smoke.png)")
    return parser.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 1024x1024, got {text!r}") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, height = _size(args.size)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"smoke: {error}", file=sys.stderr)
        return 2
    print(f"weights: {settings.weights_dir}  device: {settings.device}  dtype: {settings.dtype}  "
          f"memory mode: {settings.memory_mode}  attention: {settings.attention}")
    started = time.perf_counter()
    try:
        engine = engine_factory(settings)()
    except ServiceError as error:
        print(f"smoke: {error.message('en')}", file=sys.stderr)
        return 1
    print(f"load:    {time.perf_counter() - started:8.2f} s   {engine.describe()}")
    if not args.no_warmup:
        started = time.perf_counter()
        engine.warmup()
        print(f"warmup:  {time.perf_counter() - started:8.2f} s")
    request = GenerationRequest(prompt=args.prompt, width=width, height=height, steps=args.steps, seed=args.seed)
    try:
        result = engine.generate(request)
    except ZImageError as error:
        print(f"smoke: generation failed ({error.code}): {error}", file=sys.stderr)
        return 1
    for stage in STAGES:
        if stage in result.timings:
            print(f"{stage + ':':<15}{result.timings[stage]:8.3f} s")
    print(f"per step:      {result.timings['denoising'] / args.steps:8.3f} s  ({args.steps} steps, {width}x{height})")
    _print_peak_memory()
    out = args.out or settings.output_dir / "smoke.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    result.images[0].save(out)
    print(f"image:   {out}  (seed {result.seeds[0]}, {result.prompt_tokens} prompt tokens)")
    return 0


def _print_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated, "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")


if __name__ == "__main__":
    sys.exit(main())
