"""ControlNet Union files: the key layouts of every version, strict loading and its errors, where hints enter."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers import ZImageControlNetModel
from PIL import Image
from safetensors.torch import load_file, save_file

from model import Engine, GenerationRequest
from model.errors import CheckpointError
from model.loading.controlnet import detect_controlnet_layout, load_controlnet
from model.network.config import TransformerConfig
from model.network.controlnet import ControlBranch, ZImageControlNet
from model.tiny_model import TINY_CONTROLNET_LAYERS

# The published configs (VideoX-Fun config/z_image/*.yaml as diffusers' hlky/* configs spell them).
PUBLISHED = {
    "1.0": dict(control_layers_places=list(range(0, 30, 5)), control_in_dim=16, add_control_noise_refiner=None),
    "2.0": dict(control_layers_places=list(range(0, 30, 2)), control_refiner_layers_places=[0, 1],
                control_in_dim=33, add_control_noise_refiner="control_layers"),
    "2.1": dict(control_layers_places=list(range(0, 30, 2)), control_refiner_layers_places=[0, 1],
                control_in_dim=33, add_control_noise_refiner="control_noise_refiner"),
    "2.1-lite": dict(control_layers_places=[0, 10, 20], control_refiner_layers_places=[0, 1], control_in_dim=33,
                     add_control_noise_refiner="control_noise_refiner"),
}


def _tiny_file(tiny_model_dir, version: str):
    return tiny_model_dir / "controlnet" / f"tiny-controlnet-union-{version}.safetensors"


def _summary(keys) -> dict[str, int]:
    """Key count per top-level prefix."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = key.split(".")[0]
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


@pytest.mark.parametrize("version", list(PUBLISHED))
def test_full_size_layouts_are_read_like_the_published_files(version):
    """diffusers' own module (on the meta device) gives the full-size key set of each published file;
    ours must hold exactly those keys and shapes, and the layout must be read back from them (diffusers
    itself reads a lite file as 1.0)."""
    with torch.device("meta"):
        theirs = ZImageControlNetModel(**PUBLISHED[version]).state_dict()
    config = TransformerConfig()  # Z-Image-Turbo
    layout = detect_controlnet_layout(theirs, config)
    with torch.device("meta"):
        ours = ZImageControlNet(config, layout).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert layout.label == version
    assert list(layout.layer_places) == PUBLISHED[version]["control_layers_places"]
    assert list(layout.refiner_places) == PUBLISHED[version].get("control_refiner_layers_places", [])
    params = sum(v.numel() for v in ours.values())
    print(f"\n{version}: {len(ours)} keys, {params / 1e9:.3f} B parameters, {_summary(ours)}, "
          f"embedder {tuple(ours['control_all_x_embedder.2-1.weight'].shape)}")


def test_published_file_sizes():
    """Key and parameter counts of the published files (next-wave-notes 1.3: 136 / 295 / 91 keys)."""
    counts = {}
    for version in ("1.0", "2.1", "2.1-lite"):
        with torch.device("meta"):
            sd = ZImageControlNetModel(**PUBLISHED[version]).state_dict()
        counts[version] = (len(sd), round(sum(v.numel() for v in sd.values()) / 1e9, 3))
    assert counts == {"1.0": (136, 1.551), "2.1": (295, 3.356), "2.1-lite": (91, 1.008)}


@pytest.mark.parametrize("version", list(TINY_CONTROLNET_LAYERS))
def test_tiny_files_have_each_published_layout(tiny_model_dir, engine, version):
    sd = load_file(str(_tiny_file(tiny_model_dir, version)))
    dim = engine.transformer.config.dim
    channels = 16 if version == "1.0" else 33
    assert sd["control_all_x_embedder.2-1.weight"].shape == (dim, 4 * channels)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"control_layers\.(\d+)\.", k))}
    assert layers == set(range(TINY_CONTROLNET_LAYERS[version]))
    assert "control_layers.0.before_proj.weight" in sd and "control_layers.1.before_proj.weight" not in sd
    refiner_projections = [k for k in sd if re.match(r"control_noise_refiner\.\d+\.(before|after)_proj", k)]
    assert bool(refiner_projections) == (version != "1.0")  # 1.0 refines with plain blocks
    if version == "2.0":  # its refiner blocks are unused: projections left at zero, as published
        assert all(not sd[k].any() for k in refiner_projections)
    assert sd["control_layers.0.after_proj.weight"].abs().mean() > 0  # random, so a test can see it act
    net = load_controlnet(_tiny_file(tiny_model_dir, version), engine.transformer.config, dtype=torch.float32)
    assert net.layout.version == version.split("-")[0]
    print(f"\ntiny {version}: {len(sd)} keys {_summary(sd)}")


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_pretrained(tiny_model_dir / "hf", device="cpu", dtype=torch.float32)


def _rewrite(tiny_model_dir, tmp_path, change) -> str:
    sd = load_file(str(_tiny_file(tiny_model_dir, "2.1")))
    change(sd)
    path = tmp_path / "changed.safetensors"
    save_file(sd, str(path))
    return str(path)


def test_wrong_channel_count_is_a_readable_error(tiny_model_dir, engine, tmp_path):
    def twenty_channels(sd):
        sd["control_all_x_embedder.2-1.weight"] = torch.zeros(engine.transformer.config.dim, 4 * 20)

    path = _rewrite(tiny_model_dir, tmp_path, twenty_channels)
    with pytest.raises(CheckpointError, match=r"20 channels.*16 \(1\.0\) or 33 \(2\.x"):
        load_controlnet(path, engine.transformer.config)


def test_unknown_keys_are_refused_by_name(tiny_model_dir, engine, tmp_path):
    def extra(sd):
        sd["control_layers.0.extra_gate.weight"] = torch.zeros(3)

    with pytest.raises(CheckpointError, match="extra_gate"):
        load_controlnet(_rewrite(tiny_model_dir, tmp_path, extra), engine.transformer.config)


def test_other_files_are_not_taken_for_a_controlnet(tiny_model_dir, engine, tmp_path):
    with pytest.raises(CheckpointError, match="not a Z-Image ControlNet Union file"):
        load_controlnet(tiny_model_dir / "comfy" / "z_image_turbo_bf16.safetensors", engine.transformer.config)
    with pytest.raises(CheckpointError, match="width 256, this model's is 3840"):
        load_controlnet(_tiny_file(tiny_model_dir, "2.1"), TransformerConfig())
    with pytest.raises(CheckpointError, match=r"\.safetensors file"):
        load_controlnet(tmp_path / "controlnet.pt", engine.transformer.config)


class _FixedHints:
    """Known hints at known places, to check where the transformer adds them."""

    def __init__(self, refiner: dict[int, torch.Tensor], layers: dict[int, torch.Tensor]):
        self.refiner, self.layers = refiner, layers

    def refiner_hints(self, image, *_):
        return {i: h.expand_as(image) for i, h in self.refiner.items()}

    def layer_hints(self, unified, *_):
        return {i: h.expand_as(unified) for i, h in self.layers.items()}


def test_hints_are_added_right_after_the_refiner_and_main_layers_they_name(engine, monkeypatch):
    """Hand-derived: a refiner hint at 0 and a layer hint at 1 must equal adding them to the outputs of
    noise_refiner[0] and layers[1] (VideoX-Fun: `x = block(x) + hint * scale`), nothing else."""
    transformer = engine.transformer
    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn(16, 1, 6, 8, generator=gen)]
    captions = [torch.randn(5, transformer.config.cap_feat_dim, generator=gen)]
    refiner_hint = torch.randn(transformer.config.dim, generator=gen)
    layer_hint = torch.randn(transformer.config.dim, generator=gen)
    t = torch.tensor([0.4])
    with torch.no_grad():
        hinted = transformer(latents, t, cap_feats=captions,
                             control=_FixedHints({0: refiner_hint}, {1: layer_hint}))[0]
        plain = transformer(latents, t, cap_feats=captions)[0]
        for block, hint in ((transformer.noise_refiner[0], refiner_hint), (transformer.layers[1], layer_hint)):
            original = block.forward
            monkeypatch.setattr(block, "forward", lambda *a, _f=original, _h=hint, **k: _f(*a, **k) + _h)
        by_hand = transformer(latents, t, cap_feats=captions)[0]
    assert torch.equal(hinted, by_hand)
    assert (hinted - plain).abs().mean() > 1e-2


def test_2x_refiner_hints_change_the_image(tiny_model_dir, engine, monkeypatch):
    """The 2.1 refiner hints reach the main transformer's noise refiner and visibly move the image."""
    request = GenerationRequest(prompt="a cat", width=64, height=48, steps=3, seed=2,
                                controlnet=str(_tiny_file(tiny_model_dir, "2.1")),
                                control_image=_checkerboard())
    with_hints = np.asarray(engine.generate(request).images[0], dtype=np.int16)
    original = ControlBranch.refiner_hints
    seen = []

    def dropped(self, *args):
        seen.append(original(self, *args))  # computed (the control state still advances), not added
        return {}

    monkeypatch.setattr(ControlBranch, "refiner_hints", dropped)
    without = np.asarray(engine.generate(request).images[0], dtype=np.int16)
    assert seen and all(list(hints) == [0] for hints in seen)
    moved = np.abs(with_hints - without)
    print(f"\n2.1 refiner hints move the image: max {moved.max()} mean {moved.mean():.2f}")
    assert moved.mean() > 1.0


def _checkerboard() -> Image.Image:
    cells = (np.indices((48, 64)).sum(axis=0) // 8 % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([cells] * 3, axis=-1))
