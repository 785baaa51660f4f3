#!/usr/bin/env python
"""Write a tiny random Z-Image-Turbo model in both layouts (model.tiny_model), to try the server without weights.

    python scripts/make_tiny_model.py OUT_DIR

OUT_DIR/hf/     model_index.json, transformer/, text_encoder/, tokenizer/, vae/, scheduler/ (diffusers reads it)
OUT_DIR/comfy/  z_image_turbo_bf16.safetensors, qwen_3_4b.safetensors, ae.safetensors, tokenizer/
OUT_DIR/controlnet/  tiny ControlNet Union files in the 1.0, 2.0, 2.1 and 2.1-lite layouts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.tiny_model import build_tiny_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to create (hf/ and comfy/ are written inside)")
    args = parser.parse_args(argv)
    build_tiny_model(args.out_dir)
    print(f"tiny model written to {args.out_dir}/hf, {args.out_dir}/comfy and {args.out_dir}/controlnet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
