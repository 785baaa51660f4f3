"""ControlNet files picked by name from ZIMAGE_CONTROLNET_DIR, never by a client path (app.control)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.control import list_controlnet_names, resolve_controlnet
from app.errors import ServiceError
from app.settings import Settings


def test_default_folder_is_controlnets():
    assert Settings().controlnet_dir == Path("controlnets")


def test_a_name_resolves_to_its_file_inside_the_folder(tmp_path: Path):
    (tmp_path / "union-2.1.safetensors").write_bytes(b"net")
    (tmp_path / "readme.txt").write_text("not a controlnet")
    assert list_controlnet_names(tmp_path) == ["union-2.1"]
    assert resolve_controlnet("union-2.1", tmp_path) == str((tmp_path / "union-2.1.safetensors").resolve())
    assert resolve_controlnet(None, tmp_path) is None and resolve_controlnet("", tmp_path) is None


@pytest.mark.parametrize("name", ["../secret", "../../etc/passwd", "/etc/passwd", "sub/net", "..", ".hidden",
                                  "union-2.1.safetensors", "absent", "union\0", "C:\\net", "%2e%2e%2fsecret"])
def test_anything_but_a_known_name_is_refused_without_paths(tmp_path: Path, name: str):
    folder = tmp_path / "controlnets"
    folder.mkdir()
    (folder / "union-2.1.safetensors").write_bytes(b"net")
    (tmp_path / "secret.safetensors").write_bytes(b"outside the folder")
    (folder / "sub").mkdir()
    (folder / "sub" / "net.safetensors").write_bytes(b"nested")
    with pytest.raises(ServiceError) as caught:
        resolve_controlnet(name, folder)
    error = caught.value
    assert error.key == "controlnet_not_found" and error.field == "controlnet" and error.status == 400
    for lang in ("en", "zh"):
        message = error.message(lang)
        assert "union-2.1" in message and str(tmp_path) not in message, message


def test_the_folder_is_named_relative_to_the_working_directory(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("controlnets")
    with pytest.raises(ServiceError) as caught:
        resolve_controlnet("absent", Path("controlnets").resolve(), field="controlnet")
    assert "in controlnets." in caught.value.message("en") and "Available: -" in caught.value.message("en")
