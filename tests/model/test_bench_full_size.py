"""scripts/bench.py --full-size: refuses cleanly without CUDA, and its CPU dry run goes through every speed
variant (eager, compiled, compiled + fused; bf16 and fp8 GEMM) so the GPU script cannot rot unseen."""

from __future__ import annotations

import json

import torch

from scripts import bench
from scripts.bench_full_size import VARIANTS


def test_full_size_without_cuda_exits_2_with_a_message(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--full-size"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_unknown_variant_is_refused(capsys):
    assert bench.main(["--full-size", "--dry-run", "--variants", "eager-bf16,turbo"]) == 2
    assert "unknown variant(s) ['turbo']" in capsys.readouterr().err


def test_dry_run_measures_every_variant(capsys):
    assert bench.main(["--full-size", "--dry-run", "--repeats", "1", "--images", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["variants"]) == set(VARIANTS) == {
        "eager-bf16", "compiled-bf16", "compiled-fused-bf16", "eager-fp8", "compiled-fp8", "compiled-fused-fp8"}
    for name, result in report["variants"].items():
        assert "error" not in result, (name, result)
        assert set(result["median_s"]) == {"text_encoding", "denoising", "vae_decode", "total"}
        assert result["sequential_images"] == 2 and result["images_per_s"] > 0
        assert 0 < result["median_s"]["denoising"] < result["median_s"]["total"]
