"""'Export API code': working snippets (gradio_client, two-step curl, REST curl, openai SDK) for a recipe."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from app.fields import DOOR_DEFAULTS, FIELD_BY_NAME, FIELDS, FORM_FIELDS, NUMERIC_FIELDS
from app.ui.slots import MAX_UI_LORAS, SLOT_DEFAULTS, SLOT_PARAMETERS, filled_slots, slot_values

API_NAME = "generate"
REFERENCE_FILE = "reference.png"
# The files a snippet expects next to it for each image field that was used (a recipe keeps only a summary).
IMAGE_FILES = {"reference_image": REFERENCE_FILE, "mask": "mask.png", "control_image": "control.png"}
# Order = the Gradio endpoint's positional inputs (the UI handler's parameters): the field table, then the slots.
GRADIO_PARAMETERS = (*FORM_FIELDS, *SLOT_PARAMETERS)
DEFAULTS: dict[str, Any] = {**DOOR_DEFAULTS, **SLOT_DEFAULTS}
# REST fields the snippets pass as OpenAI arguments (prompt=, n=) or as files (the images), not in extra_body.
OPENAI_ARGUMENTS = ("prompt", "batch_size")
EXTRA_BODY_FIELDS = tuple(field for field in FIELDS
                          if field.rest and field.kind is not object and field.name not in OPENAI_ARGUMENTS)


@dataclass(frozen=True)
class Snippets:
    """The four snippets shown in the export panel."""

    python: str
    curl_gradio: str
    curl_rest: str
    openai: str


def snippets_for(params: dict[str, Any], base_url: str) -> Snippets:
    """Snippets for `params` (form values or a recipe; `reference_image` truthy = a reference was used)."""
    values = normalize(params)
    base_url = base_url.rstrip("/")
    return Snippets(python=python_snippet(values, base_url), curl_gradio=curl_gradio_snippet(values, base_url),
                    curl_rest=curl_rest_snippet(values, base_url), openai=openai_snippet(values, base_url))


def normalize(params: dict[str, Any]) -> dict[str, Any]:
    """Recipe or form dict -> the endpoint's parameter names with defaults filled in."""
    values = {name: DEFAULTS.get(name) if params.get(name) is None else params[name]
              for name in GRADIO_PARAMETERS}
    if params.get("batch_size") is None and params.get("n") is not None:
        values["batch_size"] = params["n"]
    for name in IMAGE_FILES:  # a recipe's summary, a form's upload or a flag: whether the image was used
        values[name] = bool(params.get(name))
    values["controlnet"] = values["controlnet"] or None  # the form's "none" choice is ""
    values["loras"] = lora_set(params)
    values.update(slot_values(values["loras"]))
    for field in NUMERIC_FIELDS:
        values[field.name] = field.kind(values[field.name])
    return values


def used_files(values: dict[str, Any]) -> dict[str, str]:
    """REST name -> file name of each image the snippet sends (the user keeps them next to it)."""
    return {FIELD_BY_NAME[name].rest: file for name, file in IMAGE_FILES.items() if values[name]}


def lora_set(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The LoRA set as [{"name", "scale"}]: a recipe's `loras` list, else the form's filled slots."""
    recorded = params.get("loras")
    if isinstance(recorded, list):
        return [{"name": str(item["name"]), "scale": float(item.get("scale", 1.0))} for item in recorded]
    return [{"name": name, "scale": float(scale)} for _, name, scale in filled_slots(params)]


def slots_note(values: dict[str, Any]) -> list[str]:
    """A comment for the Gradio snippets when the set has more LoRAs than the form has slots."""
    if len(values["loras"]) <= MAX_UI_LORAS:
        return []
    return [f"# Only the first {MAX_UI_LORAS} of the {len(values['loras'])} LoRAs fit the form's slots; "
            "the REST snippets carry all of them."]


def python_snippet(values: dict[str, Any], base_url: str) -> str:
    lines = [*slots_note(values), "from gradio_client import Client, handle_file", "",
             f"client = Client({base_url + '/'!r})", "status, images, details = client.predict("]
    for name in GRADIO_PARAMETERS:
        if name in IMAGE_FILES:
            value = f"handle_file({IMAGE_FILES[name]!r})" if values[name] else "None"
        else:
            value = repr(values[name])
        lines.append(f"    {name}={value},")
    lines += [f'    api_name="/{API_NAME}",', ")", "print(status)",
              "for item in images:", '    print(item["image"], item["caption"])']
    return "\n".join(lines) + "\n"


def curl_gradio_snippet(values: dict[str, Any], base_url: str) -> str:
    """Two-step Gradio call; EVENT_ID=$(...) because `| read EVENT_ID` runs in a subshell in bash."""
    data = []
    for name in GRADIO_PARAMETERS:
        if name in IMAGE_FILES:
            variable = upload_variable(name)
            data.append({"path": f"${variable}", "meta": {"_type": "gradio.FileData"}} if values[name] else None)
        else:
            data.append(values[name])
    quoted = shlex.quote(json.dumps({"data": data}, ensure_ascii=False))
    lines = [*slots_note(values), f"URL={base_url}"]
    for name, file in IMAGE_FILES.items():  # each image is uploaded first; the call names the upload's path
        if values[name]:
            variable = upload_variable(name)
            lines.append(f'{variable}=$(curl -s -F "files=@{file}" "$URL/gradio_api/upload" '
                         "| awk -F'\"' '{print $2}')")
            quoted = quoted.replace(f'"${variable}"', f"\"'\"${variable}\"'\"")
    lines += [f'EVENT_ID=$(curl -s -X POST "$URL/gradio_api/call/{API_NAME}" '
              f'-H "Content-Type: application/json" -d {quoted} | awk -F\'"\' \'{{print $4}}\')',
              f'curl -sN "$URL/gradio_api/call/{API_NAME}/$EVENT_ID"']
    return "\n".join(lines) + "\n"


def upload_variable(name: str) -> str:
    """The shell variable holding the upload path of image field `name`: REFERENCE_IMAGE_PATH, MASK_PATH, ..."""
    return f"{name.upper()}_PATH"


def rest_body(values: dict[str, Any]) -> dict[str, Any]:
    """The POST /v1/images/generations body for `values` (without the reference image data)."""
    body = {"model": "z-image-turbo", "prompt": values["prompt"], "n": values["batch_size"],
            "size": f"{values['width']}x{values['height']}", "response_format": "b64_json"}
    body.update(openai_extras(values))
    return body


def openai_extras(values: dict[str, Any]) -> dict[str, Any]:
    """The REST body's fields beyond OpenAI's own (what the openai SDK sends as extra_body)."""
    extras = {field.rest: values[field.name] for field in EXTRA_BODY_FIELDS
              if (values["reference_image"] or not field.with_reference_only)
              and (values["controlnet"] or not field.with_controlnet_only) and values[field.name] is not None}
    if values["loras"]:
        extras["loras"] = values["loras"]
    return extras


def curl_rest_snippet(values: dict[str, Any], base_url: str) -> str:
    body = json.dumps(rest_body(values), ensure_ascii=False)
    decode = ("python3 -c 'import sys, json, base64\n"
              "for i, item in enumerate(json.load(sys.stdin)[\"data\"]):\n"
              "    open(f\"z-image-{i}.png\", \"wb\").write(base64.b64decode(item[\"b64_json\"]))'")
    files = used_files(values)
    if files:
        # Unquoted here-document so $(base64 ...) runs; escape what the shell would expand in the prompt.
        escaped = body[:-1].replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
        images = "".join(f', "{rest}": "$(base64 -w0 {file})"' for rest, file in files.items())
        payload = f"{escaped}{images}}}"
        return (f'curl -s "{base_url}/v1/images/generations" -H "Content-Type: application/json" '
                f"-d @- <<EOF | {decode}\n{payload}\nEOF\n")
    return (f'curl -s "{base_url}/v1/images/generations" -H "Content-Type: application/json" \\\n'
            f"  -d {shlex.quote(body)} \\\n  | {decode}\n")


def openai_snippet(values: dict[str, Any], base_url: str) -> str:
    extras = openai_extras(values)
    lines = ["import base64", "", "from openai import OpenAI", "",
             f"client = OpenAI(base_url={base_url + '/v1'!r}, api_key='not-needed')",
             f"extra_body = {extras!r}"]
    for rest, file in used_files(values).items():
        lines.append(f"extra_body[{rest!r}] = base64.b64encode(open({file!r}, 'rb').read()).decode()")
    lines += ["response = client.images.generate(",
              "    model='z-image-turbo',",
              f"    prompt={values['prompt']!r},",
              f"    n={values['batch_size']},",
              f"    size='{values['width']}x{values['height']}',",
              "    response_format='b64_json',",
              "    extra_body=extra_body,",
              ")",
              "for i, image in enumerate(response.data):",
              "    with open(f'z-image-{i}.png', 'wb') as handle:",
              "        handle.write(base64.b64decode(image.b64_json))",
              "    print(f'z-image-{i}.png')"]
    return "\n".join(lines) + "\n"
