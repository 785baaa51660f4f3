"""Reading safetensors checkpoints (single, sharded, folders) and strict assignment into meta modules.

Every weight file the engine opens goes through `read_state_dict` / `read_shapes`; every module is
filled through `assign_state_dict`. Both turn low-level failures into one `CheckpointError` that
names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from model.errors import CheckpointError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Source = Union[PathLike, Sequence[PathLike]]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_SUFFIX = ".index.json"
SHOW_FIRST = 5  # how many offending keys an error message lists


def read_state_dict(source: Source, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint onto the CPU.

    `source` is a `.safetensors` file, a sharded `*.index.json`, a folder holding one of those, or a
    list of `.safetensors` files. With `dtype`, floating tensors are cast one at a time while
    reading, so an fp32 checkpoint never sits in memory at full size when bf16 is wanted.
    """
    files, expected = _resolve(source)
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in _read_file(file, dtype):
            if key in state_dict:
                raise CheckpointError(f"{file}: tensor {key!r} also appears in another shard. "
                                      "Fix: re-download the checkpoint; its shards overlap.")
            state_dict[key] = tensor
    _check_index_complete(state_dict.keys(), expected, source)
    logger.debug("read %d tensors from %s", len(state_dict), ", ".join(str(f) for f in files))
    return state_dict


def read_shapes(source: Source) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor, reading only the headers (cheap layout detection)."""
    files, expected = _resolve(source)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with _open(file) as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    _check_index_complete(shapes.keys(), expected, source)
    return shapes


def assign_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor],
                      dtype: torch.dtype | None, device: torch.device | str, source: str) -> nn.Module:
    """Strictly fill a module built on the meta device with `state_dict`, cast before assignment.

    Keys and shapes must match exactly; otherwise one CheckpointError lists the first few
    missing, unexpected and mis-shaped keys with their counts. Floating tensors are cast to
    `dtype` (None keeps the file's dtype) and moved to `device` before they replace the meta
    tensors, so no full-size copy in another dtype is ever made. Non-persistent buffers are not
    part of a state dict: the module's owner must (re)compute them.
    """
    expected = module.state_dict()
    _check_keys_and_shapes(expected, state_dict, type(module).__name__, source)
    device = torch.device(device)
    prepared = {key: _cast(tensor, dtype, device) for key, tensor in state_dict.items()}
    module.load_state_dict(prepared, strict=True, assign=True)
    return module


def find_weight_source(folder: PathLike) -> Path:
    """The one checkpoint inside a folder: its `*.index.json` if sharded, else its single file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: folder not found. Fix: point to the folder that holds "
                              "the model's .safetensors files (or download the weights).")
    indexes = sorted(folder.glob(f"*.safetensors{INDEX_SUFFIX}"))
    if len(indexes) == 1:
        return indexes[0]
    files = sorted(folder.glob("*.safetensors"))
    if len(indexes) == 0 and len(files) == 1:
        return files[0]
    found = [p.name for p in indexes + files] or [p.name for p in folder.iterdir()][:10]
    raise CheckpointError(
        f"{folder}: expected one .safetensors file or one *.safetensors.index.json, found "
        f"{found or 'nothing'}. Fix: keep exactly one checkpoint (single file or sharded index) here."
    )


def _resolve(source: Source) -> tuple[list[Path], set[str] | None]:
    """The list of files to read and, for an index, the set of keys it promises."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = find_weight_source(path)
        if path.name.endswith(INDEX_SUFFIX):
            return _resolve_index(path)
        return [_check_file(path)], None
    return [_check_file(Path(p)) for p in source], None


def _resolve_index(index_path: Path) -> tuple[list[Path], set[str]]:
    """Shard files named by a sharded checkpoint's index, each checked to exist."""
    if not index_path.is_file():
        raise CheckpointError(f"{index_path}: index file not found. Fix: download the checkpoint again.")
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid sharded-checkpoint index ({exc}). "
                              "Fix: download the checkpoint again.") from exc
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = index_path.parent / name
        if not shard.is_file():
            raise CheckpointError(f"{shard}: shard named in {index_path.name} is missing. "
                                  "Fix: download the missing shard (or the whole folder) again.")
        shards.append(shard)
    return shards, set(weight_map)


def _check_file(path: Path) -> Path:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints ({path.suffix}) are never loaded, because "
                              "they can run code. Fix: use the .safetensors version of these weights.")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Fix: check the path or download the weights.")
    return path


def _open(path: Path):
    """safe_open with header problems (truncation, corruption) reported as CheckpointError."""
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(path, exc) from exc


def _read_file(path: Path, dtype: torch.dtype | None) -> Iterable[tuple[str, torch.Tensor]]:
    with _open(path) as handle:
        for key in handle.keys():
            try:
                tensor = handle.get_tensor(key)
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise _corrupt(path, exc) from exc
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            yield key, tensor


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file, it is truncated or corrupt "
                           f"({exc}). Fix: download this file again.")


def _check_index_complete(found: Iterable[str], expected: set[str] | None, source: Source) -> None:
    if expected is None:
        return
    absent = sorted(expected - set(found))
    if absent:
        raise CheckpointError(f"{source}: {len(absent)} tensors listed in the index are in no shard "
                              f"(first: {', '.join(absent[:SHOW_FIRST])}). Fix: download the shards again.")


def _check_keys_and_shapes(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                           model_name: str, source: str) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mis_shaped = sorted(
        f"{key} (file {list(given[key].shape)}, model {list(expected[key].shape)})"
        for key in set(expected) & set(given)
        if tuple(given[key].shape) != tuple(expected[key].shape)
    )
    problems = [
        _listing(f"missing key{'s' * (len(missing) != 1)}", missing),
        _listing(f"unexpected key{'s' * (len(unexpected) != 1)}", unexpected),
        _listing(f"mis-shaped tensor{'s' * (len(mis_shaped) != 1)}", mis_shaped),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(
            f"{source}: does not match {model_name} ({len(expected)} tensors expected, "
            f"{len(given)} found): {'; '.join(problems)}. Fix: use a checkpoint of this model "
            "with the matching configuration."
        )


def _listing(label: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", ... ({len(items) - SHOW_FIRST} more)" if len(items) > SHOW_FIRST else ""
    return f"{len(items)} {label}: {', '.join(items[:SHOW_FIRST])}{more}"


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def count_numbered(keys: Iterable[str], pattern: str) -> int:
    """Number of numbered blocks in a state dict: highest index captured by `pattern` + 1 (0 if none)."""
    indices = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0
