"""The recipe every PNG carries: an A1111-style `parameters` text chunk and a JSON record; read back too."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

import model
from app import __version__ as APP_VERSION
from app.control import control_recipe
from app.fields import FIELDS
from model.request import GenerationRequest
from model.sampling.catalog import SAMPLERS

RECIPE_KEY = "zimage-recipe"
PARAMETERS_KEY = "parameters"
RECIPE_FORMAT = "z-image-turbo-recipe/1"
STEP_CONVENTION = "steps = transformer calls (8 steps = 8 model evaluations per image)"


def build_recipe(request: GenerationRequest, seed: int, index: int, engine_info: dict[str, Any],
                 loras: list[dict], reference: dict | None, timings: dict[str, float]) -> dict[str, Any]:
    """Everything needed to make image `index` of a batch again, plus the reproducibility stamp.

    Every field of app.fields is recorded under its name (fields that need a reference image only with one);
    `seed` is this image's own seed, `batch_seed` the request's."""
    fields = {field.name: getattr(request, field.name) if reference or not field.with_reference_only else None
              for field in FIELDS if field.kind is not object}
    fields.update(control_recipe(request))
    return {
        "format": RECIPE_FORMAT,
        **fields,
        "seed": seed,
        "batch_seed": request.seed,
        "batch_index": index,
        "max_sequence_length": request.max_sequence_length,
        "reference_image": reference,
        "loras": loras,
        # engine.describe(): layout, weight files, dtype, device, attention backend, memory mode, version.
        "model": dict(engine_info),
        "software": {"app": APP_VERSION, "model": getattr(model, "__version__", "unknown")},
        "step_convention": STEP_CONVENTION,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def parameters_text(recipe: dict[str, Any]) -> str:
    """A1111-style text: prompt, "Negative prompt: ...", then "Key: value, ..." (readable by common tools)."""
    pairs = [
        ("Steps", recipe["steps"]),
        ("Sampler", _sampler_label(recipe.get("sampler"))),
        ("Schedule shift", recipe["shift"]),
        ("CFG scale", recipe["guidance"]),
        ("Seed", recipe["seed"]),
        ("Size", f"{recipe['width']}x{recipe['height']}"),
        ("Model", "Z-Image-Turbo"),
    ]
    if recipe.get("seed_variety"):
        pairs.append(("Seed variety", recipe["seed_variety"]))
    if recipe.get("reference_image"):
        pairs.append(("Denoising strength", recipe["strength"]))
    if recipe.get("mask"):
        pairs.append(("Inpaint", "mask"))
    if recipe.get("controlnet"):
        # A1111's ControlNet extension writes its units this way; tools that read it show the settings.
        pairs.append(("ControlNet", f'"Module: {recipe["control_mode"]}, Model: {recipe["controlnet"]}, '
                                    f'Weight: {recipe["control_scale"]}"'))
    if recipe.get("loras"):
        hashes = ", ".join(f"{l['name']}: {l['sha256'][:12]}" for l in recipe["loras"])
        pairs.append(("Lora hashes", f'"{hashes}"'))
    pairs.append(("Version", f"zimage-app {recipe['software']['app']}"))
    lines = [recipe["prompt"]]
    if recipe.get("negative_prompt"):
        lines.append(f"Negative prompt: {recipe['negative_prompt']}")
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def _sampler_label(name: str | None) -> str:
    """The A1111 text's sampler: the catalogue's label (recipes older than the sampler choice used Euler)."""
    info = SAMPLERS.get(name or "euler")
    return info.label if info else str(name)


def encode_png(image: Image.Image, recipe: dict[str, Any]) -> bytes:
    """PNG bytes with both text chunks (the JSON one as UTF-8 iTXt so Chinese prompts survive)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PARAMETERS_KEY, parameters_text(recipe))
    info.add_itxt(RECIPE_KEY, json.dumps(recipe, ensure_ascii=False, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_recipe(image: Image.Image) -> dict[str, Any] | None:
    """The recipe of a PNG: our JSON record when present, else what the A1111 text gives, else None."""
    text_chunks = getattr(image, "text", None) or image.info
    raw = text_chunks.get(RECIPE_KEY)
    if raw:
        try:
            recipe = json.loads(raw)
        except json.JSONDecodeError:
            recipe = None
        if isinstance(recipe, dict) and "prompt" in recipe:
            return recipe
    parameters = text_chunks.get(PARAMETERS_KEY)
    return parse_parameters_text(parameters) if parameters else None


_PAIR = re.compile(r'\s*([A-Za-z][A-Za-z0-9 ]*):\s*("(?:[^"]*)"|[^,]*)(?:,|$)')


def parse_parameters_text(text: str) -> dict[str, Any] | None:
    """Best-effort reading of A1111 `parameters` text into recipe keys (for PNGs made by other tools)."""
    lines = text.strip().split("\n")
    if not lines or not lines[-1].lstrip().startswith("Steps:"):
        return None
    settings_line = lines.pop()
    negative = ""
    prompt_lines = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            negative = line[len("Negative prompt:"):].strip()
        elif negative:
            negative += "\n" + line
        else:
            prompt_lines.append(line)
    values = {key.strip(): value.strip().strip('"') for key, value in _PAIR.findall(settings_line)}
    recipe: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": negative}
    converters = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int),
                  "Schedule shift": ("shift", float), "Denoising strength": ("strength", float),
                  "Seed variety": ("seed_variety", float)}
    for key, (name, convert) in converters.items():
        try:
            if key in values:
                recipe[name] = convert(values[key])
        except ValueError:
            continue
    by_label = {info.label: name for name, info in SAMPLERS.items()}
    if values.get("Sampler") in by_label:
        recipe["sampler"] = by_label[values["Sampler"]]
    size = re.match(r"^(\d+)x(\d+)$", values.get("Size", ""))
    if size:
        recipe["width"], recipe["height"] = int(size.group(1)), int(size.group(2))
    return recipe
