"""The history: every PNG in the output folder, newest first, paged, each with the recipe it carries.

Shared by all tabs and surviving restarts because it is read from disk. Clients name an image only by the
id this module issued (a hash of its place in the folder), never by a path; deleting resolves that id
against a fresh listing, so nothing outside the output folder can be named, let alone deleted. Retention
(max images, max days) runs after each save so the disk cannot fill.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from app.metadata import read_recipe

logger = logging.getLogger(__name__)

PAGE_SIZE = 24
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class HistoryItem:
    id: str
    path: Path
    modified: float  # seconds since the epoch

    def recipe(self) -> dict[str, Any] | None:
        """The recipe read from the PNG's text chunks (None for a PNG without one or an unreadable file)."""
        try:
            with Image.open(self.path) as image:
                return read_recipe(image)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None


@dataclass(frozen=True)
class HistoryPage:
    items: list[HistoryItem]
    page: int  # from 0, clamped to the pages there are
    pages: int
    total: int


class History:
    """The output folder as a gallery. Cheap enough to list on every call (a folder scan, no decoding)."""

    def __init__(self, output_dir: Path, max_images: int = 0, max_days: float = 0.0):
        self.root = output_dir.resolve()
        self.max_images = max_images  # 0 = no limit
        self.max_days = max_days  # 0 = no limit

    def item_id(self, path: Path) -> str:
        return hashlib.sha256(path.relative_to(self.root).as_posix().encode("utf-8")).hexdigest()[:20]

    def items(self) -> list[HistoryItem]:
        """Every PNG file under the output folder (links that lead outside it are left out), newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob("*.png"):
            try:
                resolved = path.resolve()
                if not resolved.is_file() or not resolved.is_relative_to(self.root):
                    continue
                found.append(HistoryItem(self.item_id(path), path, path.stat().st_mtime))
            except OSError:  # deleted meanwhile
                continue
        return sorted(found, key=lambda item: (item.modified, item.path.name), reverse=True)

    def page(self, number: int, size: int = PAGE_SIZE) -> HistoryPage:
        items = self.items()
        pages = max(1, -(-len(items) // size))
        number = min(max(0, int(number)), pages - 1)
        return HistoryPage(items[number * size:(number + 1) * size], number, pages, len(items))

    def find(self, item_id: str) -> HistoryItem | None:
        """The item with this id, or None (an unknown id, a path someone made up, a deleted image)."""
        if not isinstance(item_id, str):
            return None
        return next((item for item in self.items() if item.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        item = self.find(item_id)
        if item is None:
            return False
        self._remove(item)
        return True

    def apply_retention(self, now: float | None = None) -> int:
        """Delete the images beyond max_images (oldest first) and those older than max_days; returns how many."""
        now = time.time() if now is None else now
        items = self.items()
        doomed = items[self.max_images:] if self.max_images else []
        if self.max_days:
            cutoff = now - self.max_days * SECONDS_PER_DAY
            doomed += [item for item in items[:len(items) - len(doomed)] if item.modified < cutoff]
        for item in doomed:
            self._remove(item)
        if doomed:
            logger.info("history retention: deleted %d old image(s) from %s", len(doomed), self.root)
        return len(doomed)

    def _remove(self, item: HistoryItem) -> None:
        try:
            item.path.unlink()
        except OSError as err:
            logger.warning("could not delete %s: %s", item.path, err)
            return
        folder = item.path.parent
        if folder != self.root and not any(folder.iterdir()):  # the day's folder, now empty
            folder.rmdir()
