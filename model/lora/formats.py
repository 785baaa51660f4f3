"""LoRA key formats: turn the tensors of a published LoRA file into low-rank updates of named modules.

Every format people publish for Z-Image (diffusers' `lora_conversion_utils._convert_non_diffusers_z_image_lora_to_diffusers`, ComfyUI's `comfy/lora.py`) names the same Linear layers in
a different spelling: diffusers/PEFT (`transformer.layers.0.attention.to_q.lora_A.weight`), kohya
(`lora_unet_layers_0_attention_to_q.lora_down.weight` + `.alpha`), ComfyUI/original naming
(`diffusion_model.layers.0.attention.qkv.lora_up.weight`, fused q/k/v and `attention.out`), LyCORIS
(`lycoris_layers_0_...`) and the dot variant (`...attention.to.q.lora.down.weight`). Rather than
guessing where underscores were dots, every spelling is reduced to a *signature* (lower case,
every `.`, `_` and `-` made `_`) and matched against the signatures of the transformer's actual
module names and of their ComfyUI aliases. A name that matches nothing is reported, never guessed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field

import torch

from model.errors import InvalidRequestError

logger = logging.getLogger(__name__)

SHOW_FIRST = 5  # how many keys an error message lists

# (regex on the full key, role). `lora_A`/`lora_B` may carry a PEFT adapter name (`.default.`).
_KEY_PATTERNS = (
    (re.compile(r"^(.+)\.lora_A(?:\.[^.]+)?\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_B(?:\.[^.]+)?\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.alpha$"), "alpha"),
)

# Prefixes (as signatures) that trainers put before the module name; "" = bare name.
_PREFIX_SIGNATURES = ("", "transformer_", "diffusion_model_", "model_diffusion_model_",
                      "base_model_model_", "lora_unet_", "lycoris_", "lora_transformer_", "unet_")

# ComfyUI/original names of diffusers modules (diffusers' `single_file_utils.convert_z_image_transformer_checkpoint_to_diffusers`), applied to module names only.
_COMFY_RENAMES = (
    (re.compile(r"^all_x_embedder\.\d+-\d+$"), "x_embedder"),
    (re.compile(r"^all_final_layer\.\d+-\d+\."), "final_layer."),
    (re.compile(r"\.attention\.to_out\.0$"), ".attention.out"),
)
_FUSED_QKV = ("to_q", "to_k", "to_v")

# Adapter types we do not implement; named in the refusal so the user knows why nothing applied.
_UNSUPPORTED_KINDS = (
    (re.compile(r"\.hada_w\d"), "LoHa"), (re.compile(r"\.lokr_w\d"), "LoKr"),
    (re.compile(r"\.oft_"), "OFT"), (re.compile(r"\.dora_scale$|\.lora_magnitude_vector"), "DoRA"),
    (re.compile(r"\.diff(_b)?$"), "full weight-difference"),
)
# Module names of other model families, to say what a foreign LoRA was made for.
_OTHER_MODELS = {
    "down_blocks": "a Stable Diffusion / SDXL UNet", "input_blocks": "a Stable Diffusion / SDXL UNet",
    "double_blocks": "Flux", "single_blocks": "Flux", "single_transformer_blocks": "Flux",
    "transformer_blocks": "another DiT model (Flux, SD3, ...)", "lora_te": "a text encoder",
    "text_model": "a text encoder",
}


class LoraError(InvalidRequestError):
    """A LoRA file cannot be applied: unreadable, not safetensors, for another model, mis-shaped."""

    code = "lora"

    def __init__(self, message: str):
        super().__init__(message, field="loras")


@dataclass(frozen=True)
class Target:
    """What a LoRA module name resolves to: one module, or q/k/v for a fused `attention.qkv`."""

    modules: tuple[str, ...]
    canonical: bool  # reached through the diffusers name itself, not a ComfyUI alias


@dataclass(frozen=True)
class LowRankDelta:
    """One module's update: weight += scale * up @ down (up [out, r], down [r, in])."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float


@dataclass
class ConvertedLora:
    """A LoRA file mapped onto the transformer, with the keys it could not use."""

    deltas: list[LowRankDelta]
    matched_keys: list[str] = field(default_factory=list)
    unmatched_keys: list[str] = field(default_factory=list)
    redundant_keys: list[str] = field(default_factory=list)


def signature(name: str) -> str:
    """Spelling-independent form of a module name: lower case, `.`, `-` and `_` all become `_`."""
    return re.sub(r"[._-]", "_", name).lower()


def build_lookup(shapes: dict[str, tuple[int, int]]) -> dict[str, Target]:
    """Signature -> Target for every Linear module name, its ComfyUI alias and fused q/k/v names."""
    entries: dict[str, list[Target]] = {}

    def add(name: str, target: Target) -> None:
        entries.setdefault(signature(name), []).append(target)

    for name in shapes:
        add(name, Target((name,), canonical=True))
        alias = _comfy_alias(name)
        if alias != name:
            add(alias, Target((name,), canonical=False))
        if name.endswith(".attention.to_q"):
            block = name[: -len(".to_q")]
            fused = tuple(f"{block}.{proj}" for proj in _FUSED_QKV)
            if all(module in shapes for module in fused):
                add(f"{block}.qkv", Target(fused, canonical=False))
    ambiguous = sorted(sig for sig, targets in entries.items() if len(set(targets)) > 1)
    if ambiguous:
        logger.warning("LoRA names ambiguous for this model, never matched: %s", ambiguous[:SHOW_FIRST])
    return {sig: targets[0] for sig, targets in entries.items() if len(set(targets)) == 1}


def _comfy_alias(name: str) -> str:
    for pattern, replacement in _COMFY_RENAMES:
        name = pattern.sub(replacement, name)
    return name


def split_key(key: str) -> tuple[str, str] | None:
    """(module reference, role) of a LoRA tensor key; role is down, up or alpha. None if not LoRA."""
    for pattern, role in _KEY_PATTERNS:
        match = pattern.match(key)
        if match:
            return match.group(1), role
    return None


def resolve(module_ref: str, lookup: dict[str, Target]) -> Target | None:
    """The module a LoRA module reference names, trying each known trainer prefix."""
    sig = signature(module_ref)
    for prefix in _PREFIX_SIGNATURES:
        if sig.startswith(prefix) and sig[len(prefix):] in lookup:
            return lookup[sig[len(prefix):]]
    return None


def convert_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None,
                 shapes: dict[str, tuple[int, int]], source: str) -> ConvertedLora:
    """Map a LoRA file's tensors onto modules of the given (out, in) shapes, checking everything.

    Raises LoraError when nothing matches, a pair is incomplete or any shape disagrees; keys that
    name no module of this model are returned as unmatched (the caller reports them).
    """
    _refuse_unsupported(tensors, source)
    groups, unmatched = _group_by_module(tensors, build_lookup(shapes), source)
    if not groups:
        raise LoraError(_nothing_matched_message(tensors, source))
    groups, redundant = _drop_redundant(groups, source)
    config = _peft_config(metadata, source)
    deltas: list[LowRankDelta] = []
    matched: list[str] = []
    for (module_ref, target), roles in groups.items():
        deltas.extend(_deltas_for(module_ref, target, roles, shapes, config, source))
        matched.extend(_keys(roles))
    return ConvertedLora(deltas, sorted(matched), sorted(unmatched), sorted(redundant))


# role (down/up/alpha) -> (key, tensor) for one module reference of a LoRA file
_Roles = dict[str, tuple[str, torch.Tensor]]


def _keys(roles: _Roles) -> list[str]:
    return [key for key, _ in roles.values()]


def _group_by_module(tensors: dict[str, torch.Tensor], lookup: dict[str, Target], source: str
                     ) -> tuple[dict[tuple[str, Target], _Roles], list[str]]:
    groups: dict[tuple[str, Target], _Roles] = {}
    unmatched: list[str] = []
    for key, tensor in tensors.items():
        parsed = split_key(key)
        target = resolve(parsed[0], lookup) if parsed else None
        if target is None:
            unmatched.append(key)
            continue
        module_ref, role = parsed
        roles = groups.setdefault((module_ref, target), {})
        if role in roles:
            raise LoraError(f"{source}: holds two {role} tensors for {module_ref!r}: {roles[role][0]!r} "
                            f"and {key!r}. Fix: keep one adapter per file.")
        roles[role] = (key, tensor)
    return groups, unmatched


def _drop_redundant(groups: dict[tuple[str, Target], _Roles], source: str
                    ) -> tuple[dict[tuple[str, Target], _Roles], list[str]]:
    """Alias entries (fused qkv, bare `out`) that repeat a module also given by its diffusers name.

    Some trainers (e.g. "Anime-Z") store both spellings of the same update; applying both would
    double it. diffusers keeps the split names, ComfyUI the fused ones; both give one copy. Any
    other module named twice is an error rather than a guess.
    """
    canonical = {m for (_, target) in groups if target.canonical for m in target.modules}
    kept, redundant = {}, []
    for (module_ref, target), roles in groups.items():
        if not target.canonical and any(m in canonical for m in target.modules):
            redundant.extend(_keys(roles))
        else:
            kept[(module_ref, target)] = roles
    named_by: dict[str, str] = {}
    for module_ref, target in kept:
        for module in target.modules:
            other = named_by.setdefault(module, module_ref)
            if other != module_ref:
                raise LoraError(f"{source}: gives layer {module} twice ({other!r} and {module_ref!r}). "
                                "Fix: keep one of them in the file.")
    if redundant:
        logger.warning("LoRA repeats %d tensors under ComfyUI names; using the diffusers names: %s",
                       len(redundant), redundant[:SHOW_FIRST])
    return kept, redundant


def _deltas_for(module_ref: str, target: Target, roles: _Roles, shapes: dict[str, tuple[int, int]],
                config: "_PeftConfig", source: str) -> list[LowRankDelta]:
    """Check one module's down/up/alpha against the model and split fused q/k/v updates."""
    if "down" not in roles or "up" not in roles:
        present = ", ".join(_keys(roles))
        raise LoraError(f"{source}: LoRA entry {module_ref!r} has only {present}; the down/A and "
                        "up/B matrices come in pairs. Fix: the file is incomplete, download it again.")
    down_key, down = roles["down"]
    up_key, up = roles["up"]
    outs = [shapes[m][0] for m in target.modules]
    in_features = shapes[target.modules[0]][1]
    rank = down.shape[0] if down.ndim == 2 else -1
    if down.ndim != 2 or up.ndim != 2 or down.shape[1] != in_features or \
            up.shape != (sum(outs), rank):
        raise LoraError(
            f"{source}: LoRA shapes do not fit module {'/'.join(target.modules)} of this model: "
            f"{down_key} {list(down.shape)}, {up_key} {list(up.shape)}; the model needs "
            f"[rank, {in_features}] and [{sum(outs)}, rank]. Fix: use a LoRA made for this "
            "model (Z-Image Turbo); this one is for a model of another size.")
    scale = config.scale(target.modules[0], rank, roles.get("alpha"), source)
    deltas, row = [], 0
    for module, rows in zip(target.modules, outs):
        deltas.append(LowRankDelta(module, down, up[row:row + rows], scale))
        row += rows
    return deltas


@dataclass(frozen=True)
class _PeftConfig:
    """Alpha settings diffusers/PEFT store in the file's `lora_adapter_metadata` (when present)."""

    lora_alpha: float | None = None
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    use_rslora: bool = False

    def scale(self, module: str, rank: int, alpha_entry: tuple[str, torch.Tensor] | None,
              source: str) -> float:
        """alpha / rank (alpha / sqrt(rank) for rsLoRA); 1 when no alpha is given anywhere."""
        if alpha_entry is not None:
            key, tensor = alpha_entry
            if tensor.numel() != 1:
                raise LoraError(f"{source}: {key} should hold one number, it has shape "
                                f"{list(tensor.shape)}. Fix: the file is damaged; download it again.")
            alpha = float(tensor.item())
        else:
            alpha = next((a for pattern, a in self.alpha_pattern
                          if re.fullmatch(rf"(.*\.)?({pattern})", module)), self.lora_alpha)
        if alpha is None:
            return 1.0
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def _peft_config(metadata: dict[str, str] | None, source: str) -> _PeftConfig:
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return _PeftConfig()
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise LoraError(f"{source}: its lora_adapter_metadata is not valid JSON ({exc}). "
                        "Fix: re-save the LoRA.") from exc
    # A pipeline-level save prefixes every field with the component name ("transformer.r").
    config = {key.removeprefix("transformer."): value for key, value in config.items()}
    if config.get("use_dora"):
        raise LoraError(f"{source}: this is a DoRA adapter, which is not supported (only plain "
                        "LoRA). Fix: use a plain LoRA version of it.")
    alpha = config.get("lora_alpha")
    pattern = tuple((str(k), float(v)) for k, v in (config.get("alpha_pattern") or {}).items())
    return _PeftConfig(None if alpha is None else float(alpha), pattern,
                       bool(config.get("use_rslora")))


def _refuse_unsupported(tensors: dict[str, torch.Tensor], source: str) -> None:
    """DoRA/LoHa/LoKr change the weight in ways a plain low-rank sum cannot express."""
    kinds = sorted({kind for key in tensors for pattern, kind in _UNSUPPORTED_KINDS
                    if pattern.search(key)})
    if kinds:
        raise LoraError(f"{source}: this is a {'/'.join(kinds)} adapter, which is not supported "
                        "(only plain LoRA: down/up or A/B matrices with optional alpha). "
                        "Fix: use a plain LoRA version of it.")


def _nothing_matched_message(tensors: dict[str, torch.Tensor], source: str) -> str:
    keys = sorted(tensors)
    guesses = sorted({model for key in keys for marker, model in _OTHER_MODELS.items()
                      if marker in key})
    hint = f" Its names look like a LoRA for {' or '.join(guesses)}." if guesses else ""
    return (f"{source}: none of its {len(keys)} tensors targets a layer of the Z-Image transformer "
            f"(first: {', '.join(keys[:SHOW_FIRST]) or 'the file is empty'}).{hint} "
            "Fix: use a LoRA trained for Z-Image Turbo.")
