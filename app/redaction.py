"""What clients may learn about the server's files: folder names relative to the working directory, never
absolute paths or OS error numbers. The full text goes to the server log where the error is raised."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

ERRNO_PREFIX = re.compile(r"\[Errno -?\d+\]\s*")
# An absolute POSIX path (not the "/2" of "1/2", nor a URL's "//host/..."): the last component is kept.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"/:,;()\[\]]+/)*([^\s'\"/:,;()\[\]]+)")


def public_path(path: str | Path) -> str:
    """A server path as clients see it: relative to the working directory when inside it, else its name."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return absolute.name


def redact(text: str) -> str:
    """An error text without absolute paths ("/srv/w/ae.safetensors" -> "ae.safetensors") or "[Errno 2]"."""
    return ABSOLUTE_PATH.sub(lambda match: match.group(1), ERRNO_PREFIX.sub("", text))


def public_engine_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """Engine.describe() for /health/ready and PNG recipes: the weights folder by name only."""
    public = dict(info)
    if "path" in public:
        public["path"] = public_path(str(public["path"]))
    return public
