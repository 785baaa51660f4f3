"""The history panel: the output folder's images (app.history), paged, shared by every tab; from the chosen
image: its recipe, restore the form, use it as the reference image, export its code, delete it.

Items are named by the ids app.history issued (kept in server-side gr.State), never by a client's path.
The gallery gets the files' own paths: the output folder is a Gradio static path (app.server), so they are
served from where they are instead of being copied into Gradio's cache.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.history import History, HistoryItem
from app.i18n import translate
from app.ui.strings import ui_text


def item_caption(item: HistoryItem, recipe: dict | None) -> str:
    if not recipe:
        return item.path.name
    return f"seed {recipe.get('seed', '-')} · {str(recipe.get('prompt', ''))[:40]}"


class HistoryPanel:
    """Event functions over the service's History."""

    def __init__(self, history: History):
        self.history = history

    def show(self, page: int | None, lang: str | None) -> tuple[list, list[str], int, str]:
        """(gallery value, ids in gallery order, page shown, "page 1/3 · 40 images")."""
        shown = self.history.page(page or 0)
        gallery = [(str(item.path), item_caption(item, item.recipe())) for item in shown.items]
        info = ui_text("history_page", lang or "en", page=shown.page + 1, pages=shown.pages, total=shown.total)
        return gallery, [item.id for item in shown.items], shown.page, info

    def newer(self, page: int | None, lang: str | None) -> tuple[list, list[str], int, str]:
        return self.show((page or 0) - 1, lang)

    def older(self, page: int | None, lang: str | None) -> tuple[list, list[str], int, str]:
        return self.show((page or 0) + 1, lang)

    def select(self, evt: gr.SelectData, ids: list[str]) -> tuple[str | None, Any, str]:
        """The clicked image becomes the chosen item: its recipe shows, the export panel points at it."""
        index = evt.index if isinstance(evt.index, int) else None
        item_id = ids[index] if index is not None and 0 <= index < len(ids or []) else None
        item = self.history.find(item_id) if item_id else None
        return (item.id if item else None), (item.recipe() if item else None), "history"

    def chosen_path(self, item_id: str | None) -> str | None:
        item = self.history.find(item_id) if item_id else None
        return str(item.path) if item else None

    def as_reference(self, item_id: str | None) -> Any:
        path = self.chosen_path(item_id)
        return path if path else gr.skip()

    def delete(self, item_id: str | None, page: int | None, lang: str | None) -> tuple:
        """Delete the chosen image (by its id only), then show the page again without it."""
        deleted = bool(item_id) and self.history.delete(item_id)
        note = translate("history_deleted" if deleted else "history_nothing_chosen", lang or "en")
        return (*self.show(page, lang), None, None, note)

    def recipe_of(self, item_id: str | None) -> dict | None:
        item = self.history.find(item_id) if item_id else None
        recipe = item.recipe() if item else None
        # One PNG is one image, made again by its own seed with batch size 1.
        return {**recipe, "batch_size": 1} if recipe else None
