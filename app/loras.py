"""LoRA files offered by name: ZIMAGE_LORA_DIR/<name>.safetensors -> model.LoraSpec (seam for the picker)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

from app.errors import ServiceError, out_of_range
from app.redaction import public_path
from model.request import LoraSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUFFIX = ".safetensors"
MAX_LORAS = 8
SCALE_RANGE = (-4.0, 4.0)


def list_lora_names(lora_dir: Path) -> list[str]:
    """Names (file stems) of the LoRA files in `lora_dir`, sorted; empty when the folder is missing."""
    if not lora_dir.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in lora_dir.iterdir() if p.name.endswith(SUFFIX) and p.is_file())


def lora_path(lora_dir: Path, name: str) -> Path:
    """Where the LoRA called `name` lives (it may not exist)."""
    return lora_dir / f"{name}{SUFFIX}"


def check_scale(field: str, scale: float) -> float:
    """A LoRA strength inside SCALE_RANGE, else an error naming `field`."""
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise out_of_range(field, scale, *SCALE_RANGE)
    return scale


def resolve_loras(items: Iterable[Mapping[str, object]], lora_dir: Path) -> tuple[LoraSpec, ...]:
    """[{"name", "scale"}] -> LoraSpecs with absolute paths; unknown names are an error listing the choices,
    a name given twice an error naming it (one entry per LoRA; its scale sets the strength)."""
    specs: list[LoraSpec] = []
    for index, item in enumerate(items):
        if index >= MAX_LORAS:
            raise out_of_range("loras", index + 1, 0, MAX_LORAS)
        name = str(item.get("name", ""))
        scale = check_scale(f"loras[{index}].scale", float(item.get("scale", 1.0)))  # type: ignore[arg-type]
        path = lora_path(lora_dir, name)
        # The name pattern keeps requests inside lora_dir (no "../", no absolute paths).
        if not NAME_PATTERN.match(name) or not path.is_file():
            available = ", ".join(list_lora_names(lora_dir)) or "-"
            raise ServiceError("lora_not_found", field=f"loras[{index}].name", name=name,
                               folder=public_path(lora_dir), available=available)
        if any(spec.name == name for spec in specs):
            raise ServiceError("lora_duplicate", field=f"loras[{index}].name", name=name)
        specs.append(LoraSpec(path=str(path.resolve()), scale=scale, name=name))
    return tuple(specs)


def lora_sha256(path: str | Path) -> str:
    """The file's SHA-256 as the engine computes it (cached by size and mtime)."""
    from model.lora.manager import file_sha256  # model.lora imports torch: only when a LoRA is hashed

    return file_sha256(path)


def lora_fingerprints(specs: Iterable[LoraSpec]) -> list[dict]:
    """name, scale and file sha256 of each LoRA, for the PNG recipe."""
    return [{"name": s.name, "scale": s.scale, "file": Path(s.path).name, "sha256": lora_sha256(s.path)}
            for s in specs]
