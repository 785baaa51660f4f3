"""Size presets by aspect ratio in the 1024, 1280 and 1536 classes (the official Tongyi-MAI Z-Image Space's resolution list)."""

from __future__ import annotations

from math import gcd

SIZE_CLASSES: dict[str, list[tuple[int, int]]] = {
    "1024": [(1024, 1024), (1152, 896), (896, 1152), (1152, 864), (864, 1152), (1248, 832), (832, 1248),
             (1280, 720), (720, 1280), (1344, 576), (576, 1344)],
    "1280": [(1280, 1280), (1440, 1120), (1120, 1440), (1472, 1104), (1104, 1472), (1536, 1024), (1024, 1536),
             (1536, 864), (864, 1536), (1680, 720), (720, 1680)],
    "1536": [(1536, 1536), (1728, 1344), (1344, 1728), (1728, 1296), (1296, 1728), (1872, 1248), (1248, 1872),
             (2048, 1152), (1152, 2048), (2016, 864), (864, 2016)],
}
DEFAULT_CLASS = "1024"


def preset_label(width: int, height: int) -> str:
    """"16:9 · 1280×720"."""
    divisor = gcd(width, height)
    return f"{width // divisor}:{height // divisor} · {width}×{height}"


def preset_choices(size_class: str, max_size: int) -> list[tuple[str, str]]:
    """(label, "WxH") dropdown choices of a class, without sizes above the configured maximum."""
    sizes = SIZE_CLASSES.get(size_class, [])
    return [(preset_label(w, h), f"{w}x{h}") for w, h in sizes if max(w, h) <= max_size]
