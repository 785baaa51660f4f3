"""LoRA names from ZIMAGE_LORA_DIR -> model.LoraSpec, and their fingerprints for the PNG recipe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.errors import ServiceError
from app.loras import list_lora_names, lora_fingerprints, resolve_loras


def test_names_resolve_to_specs_inside_the_folder(tmp_path: Path):
    (tmp_path / "ink-style.safetensors").write_bytes(b"lora one")
    (tmp_path / "photo_v2.safetensors").write_bytes(b"lora two")
    (tmp_path / "notes.txt").write_text("not a lora")
    assert list_lora_names(tmp_path) == ["ink-style", "photo_v2"]
    assert list_lora_names(tmp_path / "missing") == []
    specs = resolve_loras([{"name": "ink-style", "scale": 0.8}, {"name": "photo_v2"}], tmp_path)
    assert [(s.name, s.scale, Path(s.path).name) for s in specs] == [
        ("ink-style", 0.8, "ink-style.safetensors"), ("photo_v2", 1.0, "photo_v2.safetensors")]
    prints = lora_fingerprints(specs)
    assert prints[0]["sha256"] == hashlib.sha256(b"lora one").hexdigest() and prints[1]["scale"] == 1.0


@pytest.mark.parametrize("item, key", [({"name": "../secrets"}, "lora_not_found"),
                                       ({"name": "absent"}, "lora_not_found"),
                                       ({"name": "ink", "scale": 9.0}, "out_of_range")])
def test_bad_lora_requests_name_the_problem(tmp_path: Path, item: dict, key: str):
    (tmp_path / "ink.safetensors").write_bytes(b"x")
    with pytest.raises(ServiceError) as caught:
        resolve_loras([item], tmp_path)
    assert caught.value.key == key
    if key == "lora_not_found":
        assert "Available: ink" in caught.value.message("en")


def test_the_same_lora_twice_is_refused_by_name(tmp_path: Path):
    (tmp_path / "ink.safetensors").write_bytes(b"x")
    with pytest.raises(ServiceError) as caught:
        resolve_loras([{"name": "ink", "scale": 0.5}, {"name": "ink", "scale": 1.0}], tmp_path)
    assert caught.value.key == "lora_duplicate" and caught.value.field == "loras[1].name"
    assert "LoRA 'ink' is chosen more than once" in caught.value.message("en")
    assert "被选择了不止一次" in caught.value.message("zh")
