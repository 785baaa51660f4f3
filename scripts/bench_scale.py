"""Throughput of the scale-out path on the CPU: images per minute through the real app's REST door, for the
single-process server (serving = "local") and for serving = "ray" with 1 and 2 Engine replicas, under the
same load (`--clients` concurrent clients sending `--requests` images in all).

The model is model.tiny_model's random checkpoint (built into a temporary folder); a local Ray instance
declares two logical GPUs so each replica reserves one, as on a GPU box. A replica is a 1-CPU Ray actor
(one torch thread); the single-process server uses every core. So on this CPU the replica ratio shows
how work spreads over replicas, not what a GPU gains: see README, "Scaling out", for the GPU estimate.

    ZIMAGE_VENV=/work/main/.venv .venv/bin/python scripts/bench_scale.py --requests 24 --clients 4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from app.server import build_app  # noqa: E402
from app.settings import Settings, with_overrides  # noqa: E402
from model.tiny_model import build_tiny_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def images_per_minute(settings: Settings, args: argparse.Namespace) -> float:
    """Start the app, wait for the engine, send one warm-up request, then time the load."""
    port = free_port()
    app = build_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    service = app.state.service
    try:
        while service.engine_state not in ("ready", "unavailable"):
            time.sleep(0.2)
        if not service.ready:
            raise SystemExit(f"engine unavailable: {service.unavailable_error}")
        body = {"prompt": "a lighthouse on a cliff at dusk", "size": f"{args.size}x{args.size}",
                "steps": args.steps}

        def one(seed: int) -> None:
            response = httpx.post(url, json={**body, "seed": seed}, timeout=600)
            response.raise_for_status()

        one(0)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(1, args.requests + 1)))
        return args.requests * 60.0 / (time.perf_counter() - started)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="timed images per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent REST clients")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(Path(tmp) / "model")
        base = Settings(weights_dir=Path(tmp) / "model" / "comfy", output_dir=Path(tmp) / "outputs",
                        lora_dir=Path(tmp) / "loras", device="cpu", dtype="float32", min_size=128,
                        max_size=1024, queue_size=args.requests + args.clients)
        figures = {"local": images_per_minute(base, args)}
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            for replicas in (1, 2):
                settings = with_overrides(base, serving="ray", ray_min_replicas=replicas,
                                          ray_max_replicas=replicas)
                figures[f"ray_{replicas}"] = images_per_minute(settings, args)
        finally:
            ray.shutdown()
    report = {"load": vars(args), "images_per_minute": {k: round(v, 1) for k, v in figures.items()},
              "ratio_2_vs_1_replica": round(figures["ray_2"] / figures["ray_1"], 2),
              "ratio_2_replicas_vs_local": round(figures["ray_2"] / figures["local"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
