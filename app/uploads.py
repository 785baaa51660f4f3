"""Which client-named files the app may read: only regular files Gradio itself wrote into its upload folder,
or that this server wrote into its output folder (a history image used as the reference).

Under `gr.mount_gradio_app` Gradio never sets `has_launched`, so its own "was this uploaded?" check in
preprocessing is skipped: a client could name /etc/passwd (copied into the cache and served back) or
/dev/zero (hashed forever on the event loop). Every path a client sends is therefore checked here first,
without opening it: resolved through symlinks, inside the upload folder, a regular file.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Iterator

from gradio.utils import get_upload_folder

from app.errors import ServiceError

logger = logging.getLogger(__name__)
MAX_LOGGED_CHARS = 200


def upload_root() -> Path:
    """Gradio's upload/cache folder (GRADIO_TEMP_DIR, else <tmp>/gradio), symlinks resolved."""
    return Path(os.path.abspath(get_upload_folder())).resolve()


def trusted_upload(path: Any, field: str, output_dir: Path | None = None) -> Path:
    """`path` resolved, when it names a regular file inside the upload folder (or `output_dir`, where this
    server writes its own images); else ServiceError naming `field`.

    Nothing is opened or read: a device, FIFO or endless file is refused by its metadata alone."""
    if not isinstance(path, str) or not path or "\0" in path or "://" in path:
        raise _refused(field, path)
    try:
        # abspath like Gradio's own uploads (relative to the working directory), then every symlink resolved.
        resolved = Path(os.path.abspath(path)).resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
        raise _refused(field, path) from None
    roots = [upload_root()] + ([output_dir.resolve()] if output_dir is not None else [])
    if not any(resolved.is_relative_to(root) for root in roots) or not stat.S_ISREG(mode):
        raise _refused(field, path)
    return resolved


def _refused(field: str, path: Any) -> ServiceError:
    """The client's error (which names the field only); the log keeps what was asked for."""
    logger.warning("refused %s=%r: not a regular file in Gradio's upload folder", field,
                   str(path)[:MAX_LOGGED_CHARS])
    return ServiceError("untrusted_file", status=422, field=field)


def file_references(document: Any) -> Iterator[tuple[str, Any]]:
    """(JSON location, path) of every file object in a request body: a dict with a string "path", as
    gradio_client.utils.is_file_obj defines it (with or without "meta"). Iterative: deep nesting is no problem."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                yield where or "body", value["path"]
            pending.extend((f"{where}.{key}" if where else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{where}[{index}]", item) for index, item in enumerate(value))


def check_file_references(document: Any, output_dir: Path | None = None) -> None:
    """Raise for the first file object in `document` that is not a trusted upload (or one of our outputs)."""
    for where, path in file_references(document):
        trusted_upload(path, where, output_dir)
