"""A tiny random Z-Image-Turbo model in both layouts, for tests and demos without real weights.

    python scripts/make_tiny_model.py OUT_DIR      (or: from model.tiny_model import build_tiny_model)

OUT_DIR/hf/     model_index.json, transformer/, text_encoder/, tokenizer/, vae/, scheduler/ (diffusers reads it)
OUT_DIR/comfy/  z_image_turbo_bf16.safetensors, qwen_3_4b.safetensors, ae.safetensors, tokenizer/
OUT_DIR/controlnet/  tiny-controlnet-union-{1.0,2.0,2.1,2.1-lite}.safetensors (bf16, the published key layouts;
                the Tile files share the 2.1 layout), made for the tiny transformer

Built with this project's modules and transformers only. Deterministic (fixed seeds). Every weight is
rounded to a bf16-representable value, so the bf16 ComfyUI files and the fp32 HF files hold identical
numbers and both layouts generate the same image. Weights get a visible scale (and sharpened q/k norms)
so that the prompt visibly changes the image, which keeps parity tests honest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from model.network.config import TransformerConfig
from model.network.controlnet import CONTROL_CHANNELS, INPAINT_CHANNELS, ControlNetLayout, ZImageControlNet
from model.loading.transformer import diffusers_to_comfy
from model.loading.vae import diffusers_to_bfl
from model.network.transformer import ZImageTransformer
from model.network.vae import FluxVAE, VAEConfig

SEED = 1234
DIFFUSERS_VERSION = "0.42.1"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "a photo of a cat sitting on a red sofa", "a watercolor painting of mountains at sunrise",
    "a neon sign that says hello world", "portrait of an old man with a beard, studio lighting",
    "a bowl of ramen on a wooden table", "city street at night in the rain, reflections",
    "一只猫坐在红色的沙发上", "日出时山峰的水彩画", "写着你好世界的霓虹灯招牌",
    "下雨的夜晚城市街道的倒影", "木桌上的一碗拉面", "一位留着胡子的老人的肖像",
    "user assistant system", "the quick brown fox jumps over the lazy dog",
]
QWEN = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
# head_dim 128 with the real RoPE axes: the ComfyUI file carries no config, so its reader assumes them.
TRANSFORMER = dict(dim=256, n_heads=2, n_kv_heads=2, n_layers=2, n_refiner_layers=1)
VAE = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=32)
# Control layers per tiny ControlNet for the 2-layer tiny transformer (published: 6, 15, 15, 3 of 30 layers).
TINY_CONTROLNET_LAYERS = {"1.0": 2, "2.0": 2, "2.1": 2, "2.1-lite": 1}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a small Chinese/English corpus, with Qwen's special tokens and template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE,
    )


def _bf16_exact(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.bfloat16).to(torch.float32).contiguous() for k, v in sd.items()}


def build_text_encoder(vocab_size: int, pad_id: int) -> tuple[Qwen3Config, dict[str, torch.Tensor]]:
    torch.manual_seed(SEED)
    # std 0.05 keeps the features O(1): fp32 rounding between padded and unpadded runs stays ~1e-7,
    # far below the 1e-5 parity tolerance (std 0.2 gave features up to 16 and 1.3e-5 rounding).
    config = Qwen3Config(vocab_size=vocab_size, pad_token_id=pad_id, initializer_range=0.05, **QWEN)
    config.architectures = ["Qwen3Model"]
    return config, _bf16_exact(Qwen3Model(config).state_dict())


def _tiny_transformer_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One deterministic random tensor; norms near 1 (q/k norms x4), visible adaLN/final-layer scale."""
    noise = torch.randn(shape, generator=gen)
    if key.endswith(("norm_q.weight", "norm_k.weight")):
        return 4.0 * (1.0 + 0.1 * noise)
    if len(shape) == 1 and "norm" in key:
        return 1.0 + 0.1 * noise
    if key.endswith("pad_token"):
        return noise
    if key.endswith(".bias"):
        return 0.05 * noise
    gain = 2.0 if ("adaLN_modulation" in key or "final_layer" in key) else 1.0
    return gain * noise / shape[-1] ** 0.5


def build_transformer(cap_feat_dim: int) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    config = TransformerConfig(cap_feat_dim=cap_feat_dim, **TRANSFORMER)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageTransformer(config).state_dict().items()}
    gen = torch.Generator().manual_seed(SEED + 1)
    sd = {k: _tiny_transformer_tensor(k, shapes[k], gen) for k in sorted(shapes)}
    return config, _bf16_exact(sd)


def build_controlnet(version: str, config: TransformerConfig, n_layers: int,
                     seed: int = SEED + 3) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of a published ControlNet Union `version` ('1.0', '2.0', '2.1',
    '2.1-lite') for a transformer of `config`. The projections the real files start from zero are
    random here (so a test can see the ControlNet act), except the unused 2.0 refiner projections,
    which stay zero as in the published 2.0 file (that is how a 2.0 file is told from a 2.1 one)."""
    family = version.split("-")[0]
    layout = ControlNetLayout(
        version="1.0" if family == "1.0" else "2.1",  # 2.0 files carry 2.1-shaped refiner blocks
        in_channels=CONTROL_CHANNELS if family == "1.0" else INPAINT_CHANNELS, n_layers=n_layers,
        n_refiner_layers=config.n_refiner_layers, layer_places=tuple(range(n_layers)), refiner_places=())
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ZImageControlNet(config, layout).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    sd = {k: _tiny_transformer_tensor(k, shapes[k], gen) for k in sorted(shapes)}
    if family == "2.0":
        sd = {k: torch.zeros_like(v) if re.match(r"control_noise_refiner\.\d+\.(before|after)_proj\.", k) else v
              for k, v in sd.items()}
    return _bf16_exact(sd)


def write_controlnets(root: Path, config: TransformerConfig) -> list[Path]:
    """One tiny ControlNet file per published layout under `root` (bf16, as the published files)."""
    paths = []
    for index, (version, n_layers) in enumerate(TINY_CONTROLNET_LAYERS.items()):
        path = root / f"tiny-controlnet-union-{version}.safetensors"
        _save(build_controlnet(version, config, n_layers, seed=SEED + 3 + index), path, torch.bfloat16)
        paths.append(path)
    return paths


def build_vae() -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED + 2)
    return _bf16_exact(FluxVAE(VAE).state_dict())


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})


def write_hf(root: Path, tokenizer, te_config, te_sd, tr_config, tr_sd, vae_sd, vae_config: VAEConfig = VAE) -> None:
    """The Hugging Face snapshot layout, as diffusers' ZImagePipeline.save_pretrained writes it (fp32 files)."""
    _write_json(root / "model_index.json", {
        "_class_name": "ZImagePipeline", "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    _write_json(root / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False,
    })
    _write_json(root / "transformer" / "config.json", {
        "_class_name": "ZImageTransformer2DModel", "_diffusers_version": DIFFUSERS_VERSION, **tr_config.to_dict(),
    })
    _save(tr_sd, root / "transformer" / "diffusion_pytorch_model.safetensors", torch.float32)
    te_config.save_pretrained(root / "text_encoder")
    _save(te_sd, root / "text_encoder" / "model.safetensors", torch.float32)
    tokenizer.save_pretrained(root / "tokenizer")
    _write_json(root / "vae" / "config.json",
                {"_diffusers_version": DIFFUSERS_VERSION, **vae_config.to_diffusers_json()})
    _save(vae_sd, root / "vae" / "diffusion_pytorch_model.safetensors", torch.float32)


def write_comfy(root: Path, tokenizer, te_sd, tr_sd, vae_sd) -> None:
    """The three ComfyUI single files (real names and dtypes) plus the tokenizer folder."""
    _save(diffusers_to_comfy(tr_sd), root / "z_image_turbo_bf16.safetensors", torch.bfloat16)
    _save({f"model.{k}": v for k, v in te_sd.items()}, root / "qwen_3_4b.safetensors", torch.bfloat16)
    _save(diffusers_to_bfl(vae_sd), root / "ae.safetensors", torch.float32)
    tokenizer.save_pretrained(root / "tokenizer")


def build_tiny_model(out_dir: str | Path) -> Path:
    """Write OUT_DIR/hf, OUT_DIR/comfy and OUT_DIR/controlnet; returns OUT_DIR."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    te_config, te_sd = build_text_encoder(len(tokenizer), tokenizer.pad_token_id)
    tr_config, tr_sd = build_transformer(te_config.hidden_size)
    vae_sd = build_vae()
    write_hf(out_dir / "hf", tokenizer, te_config, te_sd, tr_config, tr_sd, vae_sd)
    write_comfy(out_dir / "comfy", tokenizer, te_sd, tr_sd, vae_sd)
    write_controlnets(out_dir / "controlnet", tr_config)
    return out_dir

