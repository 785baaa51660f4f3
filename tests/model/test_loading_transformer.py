"""load_transformer on real files: diffusers folders (single and sharded), ComfyUI single files, bad files."""

from __future__ import annotations

import json

import diffusers  # the test oracle; product code never imports it
import pytest
import torch
from safetensors.torch import save_file

from model.network.config import TransformerConfig
from model.errors import CheckpointError
from model.loading.safetensors_io import read_state_dict
from model.loading.transformer import comfy_to_diffusers, diffusers_to_comfy, load_transformer
from model.network.transformer import ZImageTransformer
from tests.model.tiny_transformer import (
    DIFFUSERS_WEIGHTS,
    random_state_dict,
    tiny_config,
    tiny_inputs,
    write_comfy_transformer,
    write_hf_transformer,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(config, fp32 state dict, diffusers folder) of one tiny random transformer."""
    config = tiny_config()
    state_dict = random_state_dict(config, seed=3)
    folder = write_hf_transformer(tmp_path_factory.mktemp("hf") / "transformer", config, state_dict)
    return config, state_dict, folder


def _assert_same_weights(model: ZImageTransformer, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key], tensor), key


def _outputs(model: ZImageTransformer, config: TransformerConfig) -> list[torch.Tensor]:
    latents, captions = tiny_inputs(config, [(8, 12), (6, 6)], [9, 40])
    with torch.no_grad():
        return model(latents, torch.tensor([0.25, 0.75]), captions)


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("stray_norm_final", [False, True])
def test_comfy_single_file_loads_the_same_model(checkpoint, tmp_path, prefix, stray_norm_final):
    config, state_dict, folder = checkpoint
    path = write_comfy_transformer(tmp_path / "z_image_turbo.safetensors", state_dict, prefix=prefix,
                                   stray_norm_final=stray_norm_final)
    from_comfy = load_transformer(path, dtype=torch.float32)
    assert from_comfy.config == config  # inferred from the shapes alone
    _assert_same_weights(from_comfy, state_dict)
    for a, b in zip(_outputs(from_comfy, config), _outputs(load_transformer(folder, dtype=torch.float32), config)):
        assert torch.equal(a, b)


def test_comfy_writer_matches_diffusers_single_file_reader(checkpoint, tmp_path):
    """Independent oracle: diffusers' own converter reads our ComfyUI-layout file back."""
    config, state_dict, folder = checkpoint
    path = write_comfy_transformer(tmp_path / "comfy.safetensors", state_dict, prefix=True, stray_norm_final=True)
    comfy_keys = set(read_state_dict(path))
    assert "model.diffusion_model.layers.0.attention.qkv.weight" in comfy_keys
    assert "model.diffusion_model.x_embedder.weight" in comfy_keys
    assert len(comfy_keys) == len(state_dict) - 2 * (config.n_layers + 2 * config.n_refiner_layers) + 1
    oracle = diffusers.ZImageTransformer2DModel.from_single_file(str(path), config=str(folder),
                                                                 torch_dtype=torch.float32)
    oracle_sd = oracle.state_dict()
    assert set(oracle_sd) == set(state_dict)
    for key, tensor in state_dict.items():
        assert torch.equal(oracle_sd[key], tensor), key


def test_key_converters_are_inverse(checkpoint):
    _, state_dict, _ = checkpoint
    comfy = diffusers_to_comfy(state_dict)
    assert not any(".to_q." in k or "all_x_embedder" in k for k in comfy)
    back = comfy_to_diffusers(comfy)
    assert set(back) == set(state_dict)
    assert all(torch.equal(back[k], v) for k, v in state_dict.items())


def test_sharded_folder_loads(checkpoint, tmp_path):
    config, state_dict, _ = checkpoint
    folder = write_hf_transformer(tmp_path / "transformer", config, state_dict, shards=2)
    assert len(list(folder.glob("*.safetensors"))) == 2
    _assert_same_weights(load_transformer(folder, dtype=torch.float32), state_dict)


def test_snapshot_root_resolves_to_its_transformer_folder(checkpoint):
    _, state_dict, folder = checkpoint
    _assert_same_weights(load_transformer(folder.parent, dtype=torch.float32), state_dict)


def test_bf16_load_casts_every_parameter(checkpoint):
    _, _, folder = checkpoint
    model = load_transformer(folder)  # default dtype is bf16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())


def test_explicit_config_overrides(checkpoint, tmp_path):
    config, state_dict, folder = checkpoint
    model = load_transformer(folder, dtype=torch.float32, config={"rope_theta": 10000.0})
    assert model.config.rope_theta == 10000.0 and model.config.dim == config.dim
    path = write_comfy_transformer(tmp_path / "comfy.safetensors", state_dict)
    replaced = config.replace(axes_lens=(64, 32, 32))
    assert load_transformer(path, dtype=torch.float32, config=replaced).config == replaced
    with pytest.raises(CheckpointError, match="override"):
        load_transformer(folder, config={"not_a_field": 1})


def test_full_size_config_is_inferred_from_shapes():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageTransformer(TransformerConfig()).state_dict().items()}
    assert TransformerConfig.from_state_dict(shapes) == TransformerConfig()
    comfy_shapes = {k: v.shape for k, v in comfy_to_diffusers(
        diffusers_to_comfy({k: torch.empty(s, device="meta") for k, s in shapes.items()})).items()}
    assert TransformerConfig.from_state_dict(comfy_shapes) == TransformerConfig()


def test_config_json_is_read_strictly(checkpoint, tmp_path):
    config, _, folder = checkpoint
    raw = json.loads((folder / "config.json").read_text())
    assert TransformerConfig.from_json(folder / "config.json") == config  # "_class_name" etc. ignored
    cases = {
        "unknown": ({**raw, "hidden_size": 5}, "unknown keys: \\['hidden_size'\\]"),
        "missing": ({k: v for k, v in raw.items() if k != "axes_lens"}, "missing keys: \\['axes_lens'\\]"),
        "omni": ({**raw, "siglip_feat_dim": 1152}, "Omni"),
        "inconsistent": ({**raw, "n_heads": 3}, "n_heads"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(CheckpointError, match=message) as info:
            TransformerConfig.from_json(path)
        assert str(path) in str(info.value)
    assert TransformerConfig.from_dict({**raw, "siglip_feat_dim": None}) == config


# ---- bad files: each is one CheckpointError naming the file and the problem ----

def _expect_error(path, *fragments, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load_transformer(path, dtype=torch.float32, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", str(tmp_path / "nope.safetensors"), "not found")


def test_truncated_file(checkpoint, tmp_path):
    _, _, folder = checkpoint
    data = (folder / DIFFUSERS_WEIGHTS).read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, str(path), "truncated or corrupt", "download")


def test_corrupt_header(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes((40).to_bytes(8, "little") + b"{this is not json at all, not at all!!!}" + b"\0" * 64)
    _expect_error(path, str(path), "truncated or corrupt")


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04not really a pickle")
    _expect_error(path, str(path), "pickle", ".safetensors")


@pytest.mark.parametrize("kind, keys, guess", [
    ("vae", {"decoder.up.0.block.0.conv1.weight": (4, 4), "encoder.down.0.block.0.conv1.weight": (4, 4)}, "VAE"),
    ("qwen3", {"model.embed_tokens.weight": (8, 4), "model.layers.0.self_attn.q_proj.weight": (4, 4)}, "text encoder"),
    ("sdxl", {"model.diffusion_model.input_blocks.0.0.weight": (4, 4), "conditioner.x": (2,)}, "SDXL"),
])
def test_checkpoint_of_another_model(tmp_path, kind, keys, guess):
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    _expect_error(path, str(path), "not a Z-Image transformer", "cap_embedder.1.weight", guess)


def test_missing_shard(checkpoint, tmp_path):
    config, state_dict, _ = checkpoint
    folder = write_hf_transformer(tmp_path / "transformer", config, state_dict, shards=2)
    shard = sorted(folder.glob("*.safetensors"))[1]
    shard.unlink()
    _expect_error(folder, str(shard), "missing", "index.json")


def test_shape_mismatch(checkpoint, tmp_path):
    config, state_dict, _ = checkpoint
    folder = write_hf_transformer(tmp_path / "transformer", config.replace(cap_feat_dim=32), state_dict)
    _expect_error(folder, str(folder / DIFFUSERS_WEIGHTS), "2 mis-shaped tensors", "cap_embedder.1.weight",
                  "file [256, 64], model [256, 32]")


def test_missing_keys(checkpoint, tmp_path):
    config, state_dict, _ = checkpoint
    dropped = {k: v for k, v in state_dict.items() if not k.startswith("layers.1.")}
    folder = write_hf_transformer(tmp_path / "transformer", config, dropped)
    message = _expect_error(folder, str(folder / DIFFUSERS_WEIGHTS), "15 missing keys", "layers.1.",
                            "(10 more)")
    assert "unexpected" not in message


def test_unexpected_keys(checkpoint, tmp_path):
    config, state_dict, _ = checkpoint
    extra = {**state_dict, "layers.0.attention.extra.weight": torch.zeros(2), "siglip_pad_token": torch.zeros(1, 2)}
    folder = write_hf_transformer(tmp_path / "transformer", config, extra)
    _expect_error(folder, str(folder / DIFFUSERS_WEIGHTS), "2 unexpected keys", "layers.0.attention.extra.weight",
                  "siglip_pad_token")


def test_folder_without_weights(checkpoint, tmp_path):
    config, _, _ = checkpoint
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    _expect_error(folder, str(folder), "expected one .safetensors file")
