"""Load the Qwen3 text encoder (HF `text_encoder/` folder or ComfyUI `qwen_3_4b.safetensors`) and its tokenizer.

Z-Image uses the output of the second-to-last decoder layer without the final norm, so the module is
built with the last layer removed and the final norm replaced by Identity; those weights are checked
to exist in the file and then deliberately left out (they cannot influence the features).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from model.errors import CheckpointError
from model.loading.safetensors_io import assign_state_dict, count_numbered, read_state_dict

logger = logging.getLogger(__name__)

# Qwen3 constants that tensor shapes cannot reveal (Qwen3-4B's config.json values; ComfyUI uses the same).
QWEN3_RMS_NORM_EPS = 1e-6
QWEN3_ROPE_THETA = 1_000_000.0
QWEN3_MAX_POSITIONS = 40960
_CAUSAL_LM_PREFIX = "model."


def strip_causal_lm_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen3ForCausalLM / ComfyUI keys (`model.layers.0...`) -> Qwen3Model keys; drops a tied `lm_head`."""
    if not any(k.startswith(_CAUSAL_LM_PREFIX) for k in sd):
        return sd
    return {
        k[len(_CAUSAL_LM_PREFIX):]: v for k, v in sd.items() if k.startswith(_CAUSAL_LM_PREFIX)
    }


def config_from_state_dict(sd: dict[str, torch.Tensor], source: str) -> Qwen3Config:
    """Infer a Qwen3 config from tensor shapes: hidden, vocab, layers, heads, kv heads, head_dim, MLP width."""
    try:
        vocab, hidden = sd["embed_tokens.weight"].shape
        head_dim = sd["layers.0.self_attn.q_norm.weight"].shape[0]
        heads = sd["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim
        kv_heads = sd["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
        intermediate = sd["layers.0.mlp.gate_proj.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{source}: not a Qwen3 text encoder (missing {exc.args[0]!r})") from None
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=count_numbered(sd, r"layers\.(\d+)\."),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=QWEN3_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": QWEN3_ROPE_THETA},
        max_position_embeddings=QWEN3_MAX_POSITIONS,
        attention_bias="layers.0.self_attn.q_proj.bias" in sd,
        tie_word_embeddings=True,
    )


def _config_from_json(path: Path) -> Qwen3Config:
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") != "qwen3":
        raise CheckpointError(f"{path}: model_type={raw.get('model_type')!r}; the Z-Image text encoder is 'qwen3'")
    return Qwen3Config.from_dict(raw)


def _feature_config(config: Qwen3Config) -> Qwen3Config:
    """Copy of `config` with the last decoder layer removed (features are taken before it)."""
    layers = config.num_hidden_layers - 1
    if layers < 1:
        raise CheckpointError(f"text encoder has {config.num_hidden_layers} layer(s); at least 2 are needed")
    truncated = Qwen3Config.from_dict({**config.to_dict(), "num_hidden_layers": layers,
                                       "layer_types": list(config.layer_types[:layers])})
    truncated._attn_implementation = "sdpa"
    return truncated


def _drop_unused(sd: dict[str, torch.Tensor], last_layer: int, source: str) -> dict[str, torch.Tensor]:
    """Remove the final norm and last layer's tensors after checking they are really there."""
    unused = {k for k in sd if k == "norm.weight" or k.startswith(f"layers.{last_layer}.")}
    if "norm.weight" not in unused or len(unused) < 2:
        raise CheckpointError(f"{source}: truncated Qwen3 checkpoint: final norm or layer {last_layer} missing")
    return {k: v for k, v in sd.items() if k not in unused and not k.startswith("lm_head.")}


def load_text_encoder(
    path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> Qwen3Model:
    """Qwen3Model that returns hidden_states[-2] of the full model as its last_hidden_state."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: text encoder folder without config.json")
    sd = strip_causal_lm_prefix(read_state_dict(path, dtype))
    config = _config_from_json(path / "config.json") if path.is_dir() else config_from_state_dict(sd, str(path))
    feature_config = _feature_config(config)
    sd = _drop_unused(sd, config.num_hidden_layers - 1, str(path))
    with torch.device("meta"):
        model = Qwen3Model(feature_config)
    model.norm = nn.Identity()
    assign_state_dict(model, sd, dtype=dtype, device=device, source=str(path))
    # inv_freq is a non-persistent buffer (never in a checkpoint): rebuild it off the meta device.
    model.rotary_emb = Qwen3RotaryEmbedding(feature_config).to(device)
    logger.info("loaded Qwen3 text encoder from %s: %d of %d layers used, %s",
                path, feature_config.num_hidden_layers, config.num_hidden_layers, dtype)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer from a local `tokenizer/` folder (never downloads)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from exc
