"""Inpainting and ControlNet vs diffusers 0.42.1 on tiny random weights (the reference of test_engine_parity).

- Inpainting: ZImageInpaintPipeline. Posterior rule: our engine encodes the reference with the VAE
  posterior *mode*, as our img2img does; diffusers samples it with the generator before drawing the
  noise. Patching diffusers' `retrieve_latents` to the mode leaves the noise as the generator's first
  draw, which is our seed's stream, so both random streams are equal.
- ControlNet 1.0: ZImageControlNetPipeline with a ZImageControlNetModel whose zero-initialised
  projections are randomised (else the ControlNet would change nothing and the test could not fail),
  saved as the ControlNet's own safetensors and loaded by our loader.
- ControlNet 2.0/2.1: diffusers adds the refiner hints only to its own copy of the noise refiner, so
  its images are not the 2.x semantics we follow (VideoX-Fun's); the main-layer hints, which diffusers
  computes from that hinted copy, must equal ours, and that is compared tensor by tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImageControlNetModel, ZImageControlNetPipeline, ZImageInpaintPipeline
from diffusers.pipelines.z_image import pipeline_z_image_inpaint
from PIL import Image
from safetensors.torch import save_file

from model import GenerationRequest
from model.loading.controlnet import load_controlnet
# The reference pipeline, its constants and the figures' report are test_engine_parity's.
from tests.model.test_engine_parity import (  # noqa: F401 (reference is a fixture)
    HEIGHT, NEAR_PROMPT, PROMPT, STEPS, WIDTH, _mode_instead_of_sample, _report, reference)
CONTROLNET_CONFIGS = {  # tiny versions of the published configs for the 2-layer, 1-refiner reference
    "1.0": dict(control_layers_places=[0, 1], control_in_dim=16, add_control_noise_refiner=None),
    "2.0": dict(control_layers_places=[0, 1], control_refiner_layers_places=[0], control_in_dim=33,
                add_control_noise_refiner="control_layers"),
    "2.1": dict(control_layers_places=[0, 1], control_refiner_layers_places=[0], control_in_dim=33,
                add_control_noise_refiner="control_noise_refiner"),
}


def _random_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (16, 8, 48, 40))  # white = repaint
    return mask


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _diffusers_controlnet(version: str, transformer_dim: int = 256) -> ZImageControlNetModel:
    """A tiny ZImageControlNetModel with random before/after projections (they start at zero)."""
    torch.manual_seed(2)
    net = ZImageControlNetModel(dim=transformer_dim, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                **CONTROLNET_CONFIGS[version])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "before_proj" in name or "after_proj" in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
    return net.to(torch.float32)


def _save_controlnet(net: ZImageControlNetModel, path) -> str:
    """The ControlNet's own weights (before from_transformer attaches the shared modules), as one file."""
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def test_inpainting_matches_diffusers(reference, monkeypatch):
    pipe, engine = reference
    monkeypatch.setattr(pipeline_z_image_inpaint, "retrieve_latents", _mode_instead_of_sample)
    inpaint = ZImageInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    source, mask = _random_image(0), _mask()

    def theirs(prompt: str) -> np.ndarray:
        return _pixels(inpaint(prompt, image=source, mask_image=mask, strength=0.8, width=WIDTH, height=HEIGHT,
                               num_inference_steps=STEPS, guidance_scale=0.0,
                               generator=torch.Generator("cpu").manual_seed(11)).images[0])

    ours = _pixels(engine.generate(GenerationRequest(prompt=PROMPT, width=WIDTH, height=HEIGHT, steps=STEPS,
                                                     seed=11, reference_image=source, mask=mask,
                                                     strength=0.8)).images[0])
    plain_img2img = _pixels(engine.generate(GenerationRequest(prompt=PROMPT, width=WIDTH, height=HEIGHT,
                                                              steps=STEPS, seed=11, reference_image=source,
                                                              strength=0.8)).images[0])
    ref = theirs(PROMPT)
    _report("inpaint (strength 0.8)", ours, ref, theirs(NEAR_PROMPT))
    assert np.abs(plain_img2img - ref).mean() > 1.0  # the blend is what makes the match, not img2img alone


def test_controlnet_1_0_matches_diffusers(reference, tmp_path):
    pipe, engine = reference
    net = _diffusers_controlnet("1.0")
    path = _save_controlnet(net, tmp_path / "controlnet-1.0.safetensors")
    control_pipe = ZImageControlNetPipeline(**pipe.components, controlnet=net)
    control_pipe.set_progress_bar_config(disable=True)
    control = _random_image(4)

    def theirs(prompt: str, scale: float = 0.75, **kwargs) -> np.ndarray:
        return _pixels(control_pipe(prompt, control_image=control, controlnet_conditioning_scale=scale,
                                    width=WIDTH, height=HEIGHT, num_inference_steps=STEPS,
                                    generator=torch.Generator("cpu").manual_seed(7),
                                    **{"guidance_scale": 0.0, **kwargs}).images[0])

    ours = _pixels(engine.generate(GenerationRequest(prompt=PROMPT, width=WIDTH, height=HEIGHT, steps=STEPS,
                                                     seed=7, controlnet=path, control_image=control,
                                                     control_scale=0.75)).images[0])
    ref, without = theirs(PROMPT), theirs(PROMPT, scale=0.0)
    _report("ControlNet 1.0 (scale 0.75)", ours, ref, theirs(NEAR_PROMPT))
    moved = np.abs(without - ref)
    print(f"ControlNet 1.0: scale 0.75 vs 0 moves the reference max {moved.max()} mean {moved.mean():.2f}")
    assert moved.mean() > 1.0, "the ControlNet barely acts: this test could not catch a ControlNet bug"
    # With CFG the ControlNet runs on the doubled batch (positive and negative captions of other lengths).
    guided = _pixels(engine.generate(GenerationRequest(prompt=PROMPT, width=WIDTH, height=HEIGHT, steps=STEPS,
                                                       seed=7, guidance=4.0, negative_prompt="模糊, blurry",
                                                       controlnet=path, control_image=control)).images[0])
    _report("ControlNet 1.0 with guidance 4", guided,
            theirs(PROMPT, guidance_scale=4.0, negative_prompt="模糊, blurry"),
            theirs(NEAR_PROMPT, guidance_scale=4.0, negative_prompt="模糊, blurry"))


class _Recorder:
    """Wraps a ControlBranch and keeps the hints it hands to the transformer."""

    def __init__(self, branch):
        self.branch, self.refiner, self.layers = branch, {}, {}

    def refiner_hints(self, *args):
        self.refiner = self.branch.refiner_hints(*args)
        return self.refiner

    def layer_hints(self, *args):
        self.layers = self.branch.layer_hints(*args)
        return self.layers


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_controlnet_2x_main_layer_hints_match_diffusers(reference, tmp_path, version):
    pipe, engine = reference
    net = _diffusers_controlnet(version)
    path = _save_controlnet(net, tmp_path / f"controlnet-{version}.safetensors")
    ours_net = load_controlnet(path, engine.transformer.config, dtype=torch.float32)
    assert ours_net.layout.version == version
    ZImageControlNetModel.from_transformer(net, pipe.transformer)
    gen = torch.Generator().manual_seed(5)
    latents = [torch.randn(16, 1, HEIGHT // 8, WIDTH // 8, generator=gen)]
    captions = [torch.randn(7, 64, generator=gen)]
    context = torch.randn(33, 1, HEIGHT // 8, WIDTH // 8, generator=gen)
    t = torch.tensor([0.3])
    with torch.no_grad():
        theirs = net(latents, t, captions, [context], conditioning_scale=0.75)
        recorder = _Recorder(ours_net.branch(engine.transformer, context, 0.75))
        engine.transformer(latents, t, cap_feats=captions, control=recorder)
    assert sorted(recorder.layers) == sorted(theirs) == [0, 1]
    assert sorted(recorder.refiner) == [0] and recorder.refiner[0].abs().mean() > 0
    for place, hint in theirs.items():
        diff = (recorder.layers[place] - hint).abs().max().item()
        print(f"\nControlNet {version} hint for main layer {place}: max diff {diff:.2e} "
              f"(hint magnitude {hint.abs().mean():.3f})")
        assert diff < 1e-4
