"""Architecture configuration of the Z-Image S3-DiT, read strictly from a checkpoint or its shapes."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from model.errors import CheckpointError

# What tensor shapes cannot tell: the published Z-Image constants (Tongyi-MAI/Z-Image `src/config/model.py`), as ComfyUI uses.
Z_IMAGE_ROPE_THETA = 256.0
Z_IMAGE_AXES_DIMS = (32, 48, 48)
Z_IMAGE_AXES_LENS = (1536, 512, 512)
Z_IMAGE_NORM_EPS = 1e-5
Z_IMAGE_T_SCALE = 1000.0
Z_IMAGE_LATENT_CHANNELS = 16  # the Flux VAE latent width; the patch size is derived from it

# config.json keys diffusers writes that carry no architecture (e.g. `_class_name`) start with "_".
_OPTIONAL_NULL_KEYS = ("siglip_feat_dim",)  # Omni-only option; Turbo files omit it or write null


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of ZImageTransformer; field names equal diffusers' config.json keys."""

    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (1,)
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30
    norm_eps: float = Z_IMAGE_NORM_EPS
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    rope_theta: float = Z_IMAGE_ROPE_THETA
    t_scale: float = Z_IMAGE_T_SCALE
    axes_dims: tuple[int, ...] = Z_IMAGE_AXES_DIMS
    axes_lens: tuple[int, ...] = Z_IMAGE_AXES_LENS

    def __post_init__(self) -> None:
        for name in ("all_patch_size", "all_f_patch_size", "axes_dims", "axes_lens"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = self._problems()
        if problems:
            raise ValueError("invalid transformer config: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif self.head_dim != sum(self.axes_dims):
            problems.append(f"head_dim {self.head_dim} must equal sum(axes_dims) {sum(self.axes_dims)}")
        if self.n_kv_heads != self.n_heads:
            problems.append("n_kv_heads must equal n_heads (Z-Image uses full multi-head attention)")
        if len(self.axes_dims) != 3 or len(self.axes_lens) != 3:
            problems.append("axes_dims and axes_lens need exactly 3 entries (frame/sequence, height, width)")
        if any(d % 2 for d in self.axes_dims):
            problems.append(f"every RoPE axis dim must be even, got {list(self.axes_dims)}")
        if len(self.all_patch_size) != len(self.all_f_patch_size) or not self.all_patch_size:
            problems.append("all_patch_size and all_f_patch_size must be non-empty and of equal length")
        return problems

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """SwiGLU hidden width, fixed by the architecture as int(dim / 3 * 8)."""
        return int(self.dim / 3 * 8)

    @property
    def adaln_dim(self) -> int:
        """Width of the timestep conditioning vector (min(dim, 256))."""
        return min(self.dim, 256)

    @classmethod
    def from_json(cls, path: str | Path) -> "TransformerConfig":
        """Read a diffusers `transformer/config.json`; an unknown or missing key is an error."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path}: config file not found. Fix: keep config.json next to "
                                  "the transformer weights (or download the folder again).") from exc
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc}). Fix: download it again.") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object of transformer settings.")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "TransformerConfig":
        """Strict construction from config.json content (keys starting with '_' are metadata)."""
        raw = {k: v for k, v in raw.items() if not k.startswith("_")}
        for key in _OPTIONAL_NULL_KEYS:
            if raw.pop(key, None) is not None:
                raise CheckpointError(f"{source}: {key} is set, which marks the Z-Image Omni variant; "
                                      "only Z-Image(-Turbo) text-to-image checkpoints are supported.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(raw) - names), sorted(names - set(raw))
        if unknown or missing:
            raise CheckpointError(f"{source}: transformer config does not match Z-Image "
                                  f"(unknown keys: {unknown or 'none'}; missing keys: {missing or 'none'}). "
                                  "Fix: use the config.json that came with these weights.")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The config.json content diffusers would write (lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **overrides: Any) -> "TransformerConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown transformer config fields {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], source: str = "checkpoint") -> "TransformerConfig":
        """Infer the config from diffusers-named tensors (or their shapes), as ComfyUI does.

        Shapes give the width, layer and refiner counts, heads (from the q-norm width), caption
        width and patch size; RoPE and eps come from the Z-Image constants.
        """
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state_dict.items()}
        try:
            return cls._infer(shapes)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source}: cannot infer the Z-Image transformer config from the "
                                  f"tensor shapes ({exc}). Fix: pass a config or use an unmodified "
                                  "checkpoint.") from exc

    @classmethod
    def _infer(cls, shapes: Mapping[str, tuple[int, ...]]) -> "TransformerConfig":
        dim, cap_feat_dim = shapes["cap_embedder.1.weight"]
        head_dim = shapes["layers.0.attention.norm_q.weight"][0] if "layers.0.attention.norm_q.weight" in shapes \
            else sum(Z_IMAGE_AXES_DIMS)
        patch_sizes, f_patch_sizes = [], []
        for key in sorted(k for k in shapes if re.fullmatch(r"all_x_embedder\.\d+-\d+\.weight", k)):
            patch, f_patch = (int(v) for v in key.split(".")[1].split("-"))
            patch_sizes.append(patch)
            f_patch_sizes.append(f_patch)
            in_channels = shapes[key][1] // (patch * patch * f_patch)
        if not patch_sizes:
            raise KeyError("all_x_embedder.<p>-<f>.weight")
        n_refiner_layers = _count_blocks(shapes, "noise_refiner")
        if _count_blocks(shapes, "context_refiner") != n_refiner_layers:
            raise ValueError("noise_refiner and context_refiner have different block counts")
        config = cls(
            all_patch_size=tuple(patch_sizes), all_f_patch_size=tuple(f_patch_sizes), in_channels=in_channels,
            dim=dim, n_layers=_count_blocks(shapes, "layers"), n_refiner_layers=n_refiner_layers,
            n_heads=dim // head_dim, n_kv_heads=dim // head_dim,
            qk_norm="layers.0.attention.norm_q.weight" in shapes, cap_feat_dim=cap_feat_dim,
        )
        ffn_shape = shapes.get("layers.0.feed_forward.w1.weight")
        if ffn_shape is not None and ffn_shape[0] != config.ffn_dim:
            raise ValueError(f"FFN width {ffn_shape[0]} differs from int(dim/3*8) = {config.ffn_dim}")
        return config


def _count_blocks(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    indices = {int(m.group(1)) for k in shapes if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise ValueError(f"{prefix} block indices are not contiguous: {sorted(indices)}")
    return len(indices)
