"""Cost of one step preview on this machine: 128x128 latents (a 1024x1024 image), batch 1 by default.

Times what a callback pays when it calls StepProgress.preview(): x0 = x - sigma * flow, the Flux
latent->RGB map, the copy to the CPU and the PIL image (no encoding: JPEG is the door's business), and
what a step pays when nobody calls it (building the StepProgress with its unused preview). Prints the
median and the best of --repeats runs in milliseconds.

    python scripts/bench_preview.py [--latent 128] [--batch 1] [--repeats 50] [--device cpu] [--threads N]

On a shared CPU, `--threads 1` steadies the figures (other load stalls multi-threaded element-wise ops).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from model.request import StepProgress  # noqa: E402
from model.sampling.preview import step_preview  # noqa: E402


def _timed(action, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=128, help="latent side (image side / 8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (args.batch, 16, args.latent, args.latent)
    x = torch.randn(shape, device=device)
    flow = torch.randn(shape, device=device)
    with torch.inference_mode():
        step_preview(x, flow, 0.5)  # warm-up
        called = _timed(lambda: step_preview(x, flow, 0.5), args.repeats, device)
        unused = _timed(lambda: StepProgress(step=1, total=8, sigma=0.5, preview=partial(step_preview, x, flow, 0.5)),
                        args.repeats, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, latents {list(shape)}")
    for name, times in (("preview called", called), ("preview not called", unused)):
        print(f"{name:>20}: median {statistics.median(times):.3f} ms, best {min(times):.3f} ms per step")


if __name__ == "__main__":
    main()
