"""PNG recipes (write, read back, A1111 text) and the exported API snippets (valid Python / bash)."""

from __future__ import annotations

import io
import json
import subprocess

from PIL import Image

from app.ui.export import snippets_for
from app.metadata import build_recipe, encode_png, parameters_text, parse_parameters_text, read_recipe
from model.request import GenerationRequest

ENGINE_INFO = {"layout": "comfy", "weights": {"transformer": "z_image_turbo_bf16.safetensors"}, "dtype": "bfloat16",
               "device": "cuda", "attention_backend": "flash", "memory_mode": "full", "version": "0.1.0"}


def make_recipe(**changes) -> dict:
    values = dict(prompt='一只猫举着写有"你好 World"的牌子', negative_prompt="模糊, blurry", width=1152, height=896,
                  steps=8, guidance=1.5, seed=41, batch_size=2, shift=3.0)
    values.update(changes)
    request = GenerationRequest(**values)
    return build_recipe(request, seed=42, index=1, engine_info=ENGINE_INFO, loras=[], reference=None,
                        timings={"total": 1.23456})


def test_png_carries_json_and_a1111_recipe_that_read_back():
    recipe = make_recipe()
    png = encode_png(Image.new("RGB", (32, 32)), recipe)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.text["parameters"].startswith('一只猫举着写有"你好 World"的牌子\nNegative prompt: 模糊, blurry\n')
        restored = read_recipe(image)
    assert restored == recipe
    assert restored["seed"] == 42 and restored["batch_seed"] == 41 and restored["model"]["attention_backend"] == "flash"
    assert restored["step_convention"].startswith("steps = transformer calls")
    assert restored["software"]["app"] and restored["model"]["dtype"] == "bfloat16"


def test_a1111_text_alone_restores_the_main_fields():
    text = parameters_text(make_recipe())
    parsed = parse_parameters_text(text)
    assert parsed["prompt"] == '一只猫举着写有"你好 World"的牌子' and parsed["negative_prompt"] == "模糊, blurry"
    assert (parsed["steps"], parsed["guidance"], parsed["seed"]) == (8, 1.5, 42)
    assert (parsed["width"], parsed["height"], parsed["shift"]) == (1152, 896, 3.0)
    assert parse_parameters_text("just a caption") is None


def test_snippets_are_valid_code_with_the_real_parameters():
    recipe = make_recipe(prompt="it's a \"quoted\" $HOME `cmd` prompt")
    for reference in (False, True):
        snippets = snippets_for({**recipe, "reference_image": reference}, "http://127.0.0.1:7860/")
        compile(snippets.python, "python_snippet", "exec")
        compile(snippets.openai, "openai_snippet", "exec")
        for shell in (snippets.curl_gradio, snippets.curl_rest):
            subprocess.run(["bash", "-n"], input=shell, text=True, check=True)
            assert "| read EVENT_ID" not in shell
        assert "seed=42," in snippets.python and "steps=8," in snippets.python and "width=1152," in snippets.python
        assert '"seed": 42' in snippets.curl_rest and '"size": "1152x896"' in snippets.curl_rest
        assert "EVENT_ID=$(curl" in snippets.curl_gradio and "/gradio_api/call/generate" in snippets.curl_gradio
        assert "size='1152x896'" in snippets.openai and "'guidance_scale': 1.5" in snippets.openai
        assert ("handle_file('reference.png')" in snippets.python) == reference


def test_curl_rest_snippet_passes_the_prompt_through_the_shell_unchanged(tmp_path):
    recipe = make_recipe(prompt="it's $HOME and `x` \\ done")
    snippet = snippets_for(recipe, "http://127.0.0.1:1").curl_rest
    # Replace curl by a stand-in that prints the body it would send.
    fake_curl = tmp_path / "curl"
    fake_curl.write_text('#!/bin/bash\n'
                         'while [ $# -gt 0 ]; do if [ "$1" = "-d" ]; then printf "%s" "$2"; fi; shift; done\n')
    fake_curl.chmod(0o755)
    script = snippet.split("  | python3")[0].rstrip(" \\\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=True).stdout
    assert json.loads(out)["prompt"] == "it's $HOME and `x` \\ done"


def test_snippets_of_a_recipe_carry_its_loras_with_their_scales():
    loras = [{"name": f"style-{i}", "scale": scale, "file": f"style-{i}.safetensors", "sha256": "ab" * 32}
             for i, scale in enumerate((0.5, -1.0, 1.25, 2.0))]
    snippets = snippets_for({**make_recipe(), "loras": loras}, "http://127.0.0.1:7860/")
    compile(snippets.python, "python_snippet", "exec")
    compile(snippets.openai, "openai_snippet", "exec")
    for shell in (snippets.curl_gradio, snippets.curl_rest):
        subprocess.run(["bash", "-n"], input=shell, text=True, check=True)
    # The Gradio endpoint has three slots: the first three LoRAs, and a note about the fourth.
    assert "lora_1='style-0',\n    lora_1_scale=0.5,\n    lora_2='style-1',\n    lora_2_scale=-1.0," in snippets.python
    assert "lora_3='style-2',\n    lora_3_scale=1.25," in snippets.python
    assert '"style-0", 0.5, "style-1", -1.0, "style-2", 1.25]' in snippets.curl_gradio
    for gradio_snippet in (snippets.python, snippets.curl_gradio):
        assert gradio_snippet.startswith("# Only the first 3 of the 4 LoRAs fit the form's slots")
    # REST and the openai SDK take the whole set, names and scales only (the recipe's hashes are not fields).
    rest_loras = ", ".join(f'{{"name": "style-{i}", "scale": {s}}}' for i, s in enumerate((0.5, -1.0, 1.25, 2.0)))
    assert f'"loras": [{rest_loras}]' in snippets.curl_rest and "sha256" not in snippets.curl_rest
    assert "'loras': [{'name': 'style-0', 'scale': 0.5}, {'name': 'style-1', 'scale': -1.0}" in snippets.openai
    assert "{'name': 'style-3', 'scale': 2.0}]" in snippets.openai and "sha256" not in snippets.openai
