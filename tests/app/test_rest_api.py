"""REST door on the tiny real engine: the official openai SDK, and every kind of bad input (acceptance 2, 4)."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from app.metadata import read_recipe
from live_server import LiveServer

GENERATIONS = "/v1/images/generations"


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server: LiveServer, body=None, content: bytes | None = None, lang: str = "en") -> httpx.Response:
    headers = {"Accept-Language": lang, "Content-Type": "application/json"}
    if content is not None:
        return httpx.post(server.url + GENERATIONS, content=content, headers=headers, timeout=120)
    return httpx.post(server.url + GENERATIONS, json=body, headers=headers, timeout=120)


def test_openai_sdk_gets_images_with_their_recipe(tiny_server: LiveServer):
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="anything")
    response = client.images.generate(
        model="z-image-turbo", prompt="一只橘猫 a ginger cat", n=2, size="128x128", response_format="b64_json",
        extra_body={"steps": 2, "seed": 1234, "negative_prompt": "", "guidance_scale": 0.0},
    )
    assert len(response.data) == 2
    seeds = []
    for item in response.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as image:
            assert image.format == "PNG" and image.size == (128, 128)
            recipe = read_recipe(image)
        assert recipe["prompt"] == "一只橘猫 a ginger cat" and recipe["steps"] == 2
        assert recipe["model"]["layout"] == "comfy" and recipe["model"]["dtype"] == "float32"
        seeds.append(recipe["seed"])
    assert seeds == [1234, 1235]
    assert [m.id for m in client.models.list().data] == ["z-image-turbo"]


def test_reference_image_is_used_and_recorded(tiny_server: LiveServer):
    reference = Image.new("RGB", (160, 96), (200, 30, 30))
    response = post(tiny_server, {"prompt": "red poster", "size": "128x128", "steps": 4, "seed": 5,
                                  "image": "data:image/png;base64," + png_base64(reference), "strength": 0.5})
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
        recipe = read_recipe(image)
    assert recipe["reference_image"]["used"] is True and recipe["strength"] == 0.5
    assert (recipe["reference_image"]["width"], recipe["reference_image"]["height"]) == (160, 96)


def test_a_client_that_hangs_up_frees_the_queue(tiny_server: LiveServer):
    cancelled = 'zimage_jobs_total{outcome="cancelled"}'
    before = tiny_server.metric(cancelled)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tiny_server.url + GENERATIONS, json={"prompt": "abandoned", "size": "128x128", "steps": 50},
                   timeout=1.5)
    tiny_server.wait_until(lambda: tiny_server.metric(cancelled) == before + 1, timeout=60)
    assert tiny_server.metric("zimage_jobs_running") == 0


def decompression_bomb() -> str:
    """A small PNG file whose header declares 20000 x 20000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


BAD_INPUTS = [
    ("empty prompt", {"prompt": "", "size": "128x128"}, 400, "prompt_empty", "prompt"),
    ("overlong prompt (tokens)", {"prompt": "cat " * 1100, "size": "128x128"}, 400, "prompt_too_long", "prompt"),
    ("overlong prompt (characters)", {"prompt": "x" * 20001, "size": "128x128"}, 400, "prompt_too_many_chars",
     "prompt"),
    ("size too large", {"prompt": "a", "size": "4096x4096"}, 400, "size_out_of_range", "width"),
    ("size too small", {"prompt": "a", "size": "64x128"}, 400, "size_out_of_range", "width"),
    ("size not a multiple of 16", {"prompt": "a", "size": "128x136"}, 400, "size_out_of_range", "height"),
    ("size garbage", {"prompt": "a", "size": "big"}, 400, "size_format", "size"),
    ("too many images", {"prompt": "a", "n": 9, "size": "128x128"}, 400, "out_of_range", "n"),
    ("non-image upload", {"prompt": "a", "size": "128x128", "image": base64.b64encode(b"not a picture").decode()},
     400, "not_an_image", "image"),
    ("not base64", {"prompt": "a", "size": "128x128", "image": "%%%"}, 400, "bad_base64", "image"),
    ("oversized upload", {"prompt": "a", "size": "128x128", "image": "A" * 2_800_000}, 413, "upload_too_large",
     "image"),
    ("unknown field", {"prompt": "a", "size": "128x128", "cfg": 3}, 400, "unknown_field", "cfg"),
    ("missing prompt", {"size": "128x128"}, 400, "missing_field", "prompt"),
    ("wrong type", {"prompt": "a", "steps": "many"}, 422, "wrong_type", "steps"),
    ("url response format", {"prompt": "a", "response_format": "url"}, 400, "url_format_unsupported",
     "response_format"),
    ("unknown lora", {"prompt": "a", "size": "128x128", "loras": [{"name": "../../etc/passwd"}]}, 400,
     "lora_not_found", "loras[0].name"),
]


@pytest.mark.parametrize("case, body, status, code, param", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_openai_error(tiny_server: LiveServer, case, body, status, code, param):
    response = post(tiny_server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error" and len(error["message"]) > 20


def test_decompression_bomb_is_refused_before_decoding(tiny_server: LiveServer):
    response = post(tiny_server, {"prompt": "a", "size": "128x128", "image": decompression_bomb()})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "upload_too_many_pixels" and "400000000" in error["message"]


def test_unknown_field_message_lists_the_accepted_ones(tiny_server: LiveServer):
    error = post(tiny_server, {"prompt": "a", "guidance": 2}).json()["error"]
    assert "'guidance'" in error["message"] and "guidance_scale" in error["message"]
    error = post(tiny_server, {"prompt": "a", "loras": [{"name": "x", "weight": 1}]}).json()["error"]
    assert error["param"] == "loras.0.weight" and "name, scale" in error["message"]


def test_garbage_json_and_chinese_messages(tiny_server: LiveServer):
    response = post(tiny_server, content=b'{"prompt": "a", oops', lang="zh-CN,zh;q=0.9,en;q=0.8")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert "不是有效的 JSON" in response.json()["error"]["message"]
    response = post(tiny_server, {"prompt": " "}, lang="zh-CN")
    assert "提示词为空" in response.json()["error"]["message"]
    response = post(tiny_server, content=b"[1, 2]")
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]


def test_image_over_the_pixel_limit_is_refused(tiny_server: LiveServer):
    # 1025 x 1024 is over the test limit of 1024 x 1024 pixels but far below Pillow's own bomb limit.
    big = png_base64(Image.new("RGB", (1025, 1024)))
    response = post(tiny_server, {"prompt": "a", "size": "128x128", "image": big})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "upload_too_many_pixels" and "1049600" in error["message"]


def test_server_still_serves_after_bad_input(tiny_server: LiveServer):
    for _, body, *_ in BAD_INPUTS[:4]:
        post(tiny_server, body)
    response = post(tiny_server, {"prompt": "still alive", "size": "128x128", "steps": 2, "seed": 3})
    assert response.status_code == 200 and response.json()["seeds"] == [3]
