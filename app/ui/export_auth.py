"""Exported snippets for a server with an API key: they read the key from ZIMAGE_API_KEY, never contain it.

Kept apart from app.ui.export (which writes the snippets) so the key handling is one small step applied
to finished snippets: every curl gets the Bearer header, gradio_client gets `headers=`, openai `api_key=`.
"""

from __future__ import annotations

import dataclasses
import re

from app.ui.export import Snippets

KEY_ENV = "ZIMAGE_API_KEY"
CURL_HEADER = f'-H "Authorization: Bearer ${KEY_ENV}"'
PYTHON_HEADERS = f"headers={{'Authorization': 'Bearer ' + os.environ[{KEY_ENV!r}]}}"
# A curl command at the start of a line, also as `NAME=$(curl ...`: prompts sit inside quoted JSON on the same
# line, so they never start a line.
CURL_COMMAND = re.compile(r"^((?:[A-Z_]+=\$\()?curl) ", re.MULTILINE)
GRADIO_CLIENT = re.compile(r"^(client = Client\(.*)\)$", re.MULTILINE)
OPENAI_KEY = re.compile(r"^(client = OpenAI\(.*api_key=)'not-needed'\)$", re.MULTILINE)


def with_api_key(snippets: Snippets) -> Snippets:
    """`snippets` that send the key from the ZIMAGE_API_KEY environment variable."""
    return dataclasses.replace(
        snippets,
        python=_import_os(GRADIO_CLIENT.sub(lambda m: f"{m.group(1)}, {PYTHON_HEADERS})", snippets.python)),
        curl_gradio=CURL_COMMAND.sub(lambda m: f"{m.group(1)} {CURL_HEADER} ", snippets.curl_gradio),
        curl_rest=CURL_COMMAND.sub(lambda m: f"{m.group(1)} {CURL_HEADER} ", snippets.curl_rest),
        openai=_import_os(OPENAI_KEY.sub(lambda m: f"{m.group(1)}os.environ[{KEY_ENV!r}])", snippets.openai)),
    )


def _import_os(code: str) -> str:
    return f"import os\n{code}"
