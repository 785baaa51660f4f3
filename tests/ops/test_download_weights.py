"""scripts/download_weights.py against a fake local hub (acceptance 3): layouts, resume, size check, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ops.fake_hub import FakeHub
from tests.ops.supervisor_helpers import REPO_ROOT, free_port, load_script

download_weights = load_script(REPO_ROOT / "scripts" / "download_weights.py")

COMFY_REPO = "Comfy-Org/z_image_turbo"
HF_REPO = "Tongyi-MAI/Z-Image-Turbo"


def _blob(size: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(size))


COMFY_FILES = {
    "split_files/diffusion_models/z_image_turbo_bf16.safetensors": _blob(6000, 1),
    "split_files/text_encoders/qwen_3_4b.safetensors": _blob(4000, 2),
    "split_files/vae/ae.safetensors": _blob(3000, 3),
    "split_files/diffusion_models/some_other_model.safetensors": _blob(2000, 4),
    "README.md": b"# comfy",
}
HF_FILES = {
    "model_index.json": b'{"_class_name": "ZImagePipeline"}',
    "scheduler/scheduler_config.json": b"{}",
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": _blob(5000, 5),
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": _blob(2500, 6),
    "transformer/diffusion_pytorch_model.safetensors.index.json": b"{}",
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors": _blob(3500, 7),
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": _blob(1500, 8),
    "tokenizer/tokenizer.json": b'{"model": {}}',
    "tokenizer/tokenizer_config.json": b"{}",
    "tokenizer/merges.txt": b"#version",
    "README.md": b"# Z-Image-Turbo",
    "assets/showcase.jpg": _blob(3000, 9),
}
TRANSFORMER = "z_image_turbo_bf16.safetensors"


@pytest.fixture()
def hub():
    with FakeHub({COMFY_REPO: dict(COMFY_FILES), HF_REPO: dict(HF_FILES)}) as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "ZIMAGE_WEIGHTS_DIR", "ZIMAGE_DOWNLOAD_LAYOUT", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_comfy_layout_takes_three_files_and_the_tokenizer(hub: FakeHub, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # the documented way for mirrors
    assert download_weights.main(["--dir", str(tmp_path / "w")]) == 0
    assert _tree(tmp_path / "w") == {
        TRANSFORMER: COMFY_FILES["split_files/diffusion_models/z_image_turbo_bf16.safetensors"],
        "qwen_3_4b.safetensors": COMFY_FILES["split_files/text_encoders/qwen_3_4b.safetensors"],
        "ae.safetensors": COMFY_FILES["split_files/vae/ae.safetensors"],
        "tokenizer/tokenizer.json": HF_FILES["tokenizer/tokenizer.json"],
        "tokenizer/tokenizer_config.json": HF_FILES["tokenizer/tokenizer_config.json"],
        "tokenizer/merges.txt": HF_FILES["tokenizer/merges.txt"],
    }
    assert download_weights.weights_present(tmp_path / "w", "comfy")


def test_hf_layout_takes_the_pipeline_folders_only(hub: FakeHub, tmp_path: Path) -> None:
    assert download_weights.main(["--layout", "hf", "--mirror", hub.endpoint, "--dir", str(tmp_path / "w")]) == 0
    expected = {k: v for k, v in HF_FILES.items() if k != "README.md" and not k.startswith("assets/")}
    assert _tree(tmp_path / "w") == expected
    assert download_weights.weights_present(tmp_path / "w", "hf")
    assert not download_weights.weights_present(tmp_path / "w", "comfy")


def test_a_dropped_connection_is_resumed_with_a_range_request(hub: FakeHub, tmp_path: Path) -> None:
    hub.state.cut_after["split_files/diffusion_models/z_image_turbo_bf16.safetensors"] = [2500]
    assert download_weights.main(["--mirror", hub.endpoint, "--dir", str(tmp_path / "w")]) == 0
    assert hub.gets(TRANSFORMER) == ["bytes=0-", "bytes=2500-"]
    assert (tmp_path / "w" / TRANSFORMER).read_bytes() == \
        COMFY_FILES["split_files/diffusion_models/z_image_turbo_bf16.safetensors"]


def test_an_interrupted_run_resumes_when_started_again(hub: FakeHub, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    hub.state.cut_after["split_files/diffusion_models/z_image_turbo_bf16.safetensors"] = [2500]
    folder = tmp_path / "w"
    assert download_weights.main(["--mirror", hub.endpoint, "--dir", str(folder), "--retries", "0"]) == 4
    assert "interrupted at 2500 of 6000 bytes" in capsys.readouterr().err
    assert (folder / (TRANSFORMER + ".part")).stat().st_size == 2500
    assert not (folder / TRANSFORMER).exists()
    assert not download_weights.weights_present(folder, "comfy")

    assert download_weights.main(["--mirror", hub.endpoint, "--dir", str(folder), "--retries", "0"]) == 0
    assert hub.gets(TRANSFORMER) == ["bytes=0-", "bytes=2500-"]
    assert not list(folder.rglob("*.part"))
    assert (folder / TRANSFORMER).read_bytes() == \
        COMFY_FILES["split_files/diffusion_models/z_image_turbo_bf16.safetensors"]

    seen = len(hub.state.requests)
    assert download_weights.main(["--mirror", hub.endpoint, "--dir", str(folder)]) == 0
    assert len(hub.state.requests) == seen, "complete weights must not touch the network"
    assert "weights present" in capsys.readouterr().out


def test_a_file_of_the_wrong_size_is_refused(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    hub.state.reported_size["split_files/vae/ae.safetensors"] = 3000 + 100
    assert download_weights.main(["--mirror", hub.endpoint, "--dir", str(tmp_path / "w")]) == 4
    assert "size check failed for ae.safetensors: got 3000 bytes, the hub says 3100" in capsys.readouterr().err
    assert not (tmp_path / "w" / "ae.safetensors").exists()


def test_offline_gives_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert download_weights.main(["--mirror", endpoint, "--dir", str(tmp_path / "w")]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach {endpoint}" in err
    assert "hf-mirror.com" in err and str(tmp_path / "w") in err
    assert "Traceback" not in err


def test_hub_offline_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_weights.main(["--dir", str(tmp_path / "w")]) == 3
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_a_mirror_without_the_repository_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with FakeHub({COMFY_REPO: dict(COMFY_FILES)}) as partial:
        assert download_weights.main(["--mirror", partial.endpoint, "--dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "Tongyi-MAI/Z-Image-Turbo" in err and "mirror" in err
    assert "Traceback" not in err


def test_check_mode_reports_without_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert download_weights.main(["--check", "--dir", str(tmp_path)]) == 1
    assert f"weights missing in {tmp_path}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_a_complete_folder_of_the_other_layout_counts_as_present(hub: FakeHub, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "w"
    assert download_weights.main(["--layout", "hf", "--mirror", hub.endpoint, "--dir", str(folder)]) == 0
    seen = len(hub.state.requests)
    assert download_weights.main(["--layout", "comfy", "--mirror", hub.endpoint, "--dir", str(folder)]) == 0
    assert f"weights present in {folder} (hf layout)" in capsys.readouterr().out
    assert len(hub.state.requests) == seen
