"""POST /v1/images/edits: OpenAI's multipart image edit mapped onto inpainting (alpha 0 = edit -> white = repaint),
through the official openai SDK, with the HTTP guard still in front of it."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from app.metadata import read_recipe
from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import LiveServer, running
from model.request import GenerationRequest

EDITS = "/v1/images/edits"
KEY = "zk-edits-0123456789abcdef"
HOLE = (32, 48, 96, 80)  # the transparent box of the test mask: (left, top, right, bottom)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(size=(128, 128)) -> bytes:
    return png(Image.new("RGB", size, (40, 90, 200)))


def openai_mask(size=(128, 128)) -> bytes:
    """OpenAI's convention: opaque everywhere except a fully transparent box, the area to edit."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), HOLE)
    return png(mask)


def post(server: LiveServer, files: dict, data: dict, **headers) -> httpx.Response:
    return httpx.post(server.url + EDITS, files=files, data={"size": "128x128", "steps": "1", **data},
                      headers=headers, timeout=120)


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with running(make_settings(tmp_path_factory.mktemp("edits-fake")), FakeEngine) as live:
        yield live


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with running(make_settings(tmp_path_factory.mktemp("edits-key"), api_key=KEY), FakeEngine) as live:
        yield live


def last_call(server: LiveServer) -> GenerationRequest:
    return server.service._engine.calls[-1]


def test_transparent_mask_pixels_become_the_repainted_area_at_strength_one(fake_server: LiveServer):
    response = post(fake_server, {"image": ("in.png", picture()), "mask": ("mask.png", openai_mask())},
                    {"prompt": "a red door"})
    assert response.status_code == 200, response.text
    request = last_call(fake_server)
    mask = np.asarray(request.mask.convert("L"))
    expected = np.zeros((128, 128), np.uint8)
    left, top, right, bottom = HOLE
    expected[top:bottom, left:right] = 255
    assert np.array_equal(mask, expected)
    assert request.strength == 1.0 and request.reference_image.mode == "RGB"
    assert request.reference_image.getpixel((0, 0)) == (40, 90, 200) and request.prompt == "a red door"


def test_without_a_mask_the_images_own_transparency_is_the_mask(fake_server: LiveServer):
    image = Image.new("RGBA", (128, 128), (40, 90, 200, 255))
    image.paste((0, 0, 0, 0), HOLE)
    assert post(fake_server, {"image": ("in.png", png(image))}, {"prompt": "fill"}).status_code == 200
    request = last_call(fake_server)
    assert request.mask.getpixel((HOLE[0], HOLE[1])) == 255 and request.mask.getpixel((0, 0)) == 0


def test_an_opaque_image_without_mask_is_a_reference_and_fields_override(fake_server: LiveServer):
    assert post(fake_server, {"image": ("in.png", picture())}, {"prompt": "variation"}).status_code == 200
    request = last_call(fake_server)
    assert request.mask is None and request.strength == GenerationRequest.strength
    response = post(fake_server, {"image": ("in.png", picture()), "mask": ("m.png", openai_mask())},
                    {"prompt": "softer", "strength": "0.5", "seed": "11", "n": "2"})
    assert response.status_code == 200, response.text
    request = last_call(fake_server)
    assert (request.strength, request.seed, request.batch_size) == (0.5, 11, 2)


def test_a_control_image_may_be_sent_as_a_file(fake_server: LiveServer):
    folder = fake_server.service.settings.controlnet_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "union-2.1.safetensors").write_bytes(b"a ControlNet file")
    # Larger than a text field may be (max_prompt_chars x 4 bytes): as a file it is bounded like the image.
    control = Image.effect_noise((256, 256), 90).convert("RGB")
    assert len(png(control)) > fake_server.service.settings.max_prompt_chars * 4
    response = post(fake_server, {"image": ("i.png", picture()), "control_image": ("c.png", png(control))},
                    {"prompt": "edges", "controlnet": "union-2.1", "control_mode": "canny"})
    assert response.status_code == 200, response.text
    request = last_call(fake_server)
    assert request.control_image.size == (256, 256) and request.control_mode == "canny"
    assert np.array_equal(np.asarray(request.control_image), np.asarray(control))


BAD_EDITS = [
    ("mask of another size", {"image": ("i.png", picture()), "mask": ("m.png", openai_mask((64, 64)))},
     {"prompt": "x"}, 400, "mask"),
    ("no image", {"mask": ("m.png", openai_mask())}, {"prompt": "x"}, 400, "image"),
    ("no prompt", {"image": ("i.png", picture())}, {}, 400, "prompt"),
    ("mask not an image", {"image": ("i.png", picture()), "mask": ("m.png", b"not a png")}, {"prompt": "x"}, 400,
     "mask"),
    ("two images", {"image": ("i.png", picture()), "image[]": ("j.png", picture())}, {"prompt": "x"}, 400,
     "image[]"),
    ("unknown field", {"image": ("i.png", picture())}, {"prompt": "x", "colour": "red"}, 400, "colour"),
    ("image as text", {"mask": ("m.png", openai_mask())}, {"prompt": "x", "image": "/etc/passwd"}, 400, "image"),
]


@pytest.mark.parametrize("case, files, data, status, param", BAD_EDITS, ids=[case[0] for case in BAD_EDITS])
def test_bad_edits_name_the_field(fake_server: LiveServer, case, files, data, status, param):
    calls = len(fake_server.service._engine.calls)
    response = post(fake_server, files, data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert len(fake_server.service._engine.calls) == calls


def test_json_bodies_are_refused_with_the_fix(fake_server: LiveServer):
    response = httpx.post(fake_server.url + EDITS, json={"prompt": "x"}, timeout=30)
    assert response.status_code == 415 and response.json()["error"]["code"] == "multipart_required"


def test_the_guard_still_applies_host_origin_and_key(fake_server: LiveServer, keyed: LiveServer):
    files, data = {"image": ("i.png", picture())}, {"prompt": "x"}
    assert post(fake_server, files, data, Host="evil.example").status_code == 400
    response = post(fake_server, files, data, Origin="http://evil.example")
    assert response.status_code == 403 and response.json()["error"]["code"] == "origin_not_allowed"
    assert post(keyed, files, data).status_code == 401
    assert post(keyed, files, data, Authorization=f"Bearer {KEY}").status_code == 200


def test_openai_sdk_images_edit_inpaints_on_the_tiny_engine(tiny_server: LiveServer):
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="anything")
    response = client.images.edit(image=("in.png", picture()), mask=("mask.png", openai_mask()), prompt="a red door",
                                  n=1, size="128x128", response_format="b64_json", model="z-image-turbo")
    with Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))) as image:
        assert image.format == "PNG" and image.size == (128, 128)
        recipe = read_recipe(image)
    assert recipe["prompt"] == "a red door" and recipe["strength"] == 1.0
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("in.png", picture()), mask=("mask.png", openai_mask((64, 64))), prompt="x",
                           size="128x128", response_format="b64_json")
    assert caught.value.body["param"] == "mask"
