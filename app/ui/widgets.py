"""Form widgets built from the field table, and the registry of texts the language switch rewrites."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.fields import FIELD_BY_NAME, RequestField, field_range
from app.settings import Settings
from app.ui.choices import choice_options
from app.ui.strings import ui_text


class Labels:
    """Components whose texts the explicit language switch rewrites (it must beat the browser locale)."""

    def __init__(self, translations: gr.I18n):
        self.t = translations  # key -> I18nData, translated by the browser's locale
        self.entries: list[tuple[Any, dict[str, str]]] = []

    def __call__(self, component: Any, **props: str) -> Any:
        """Register `component`: each prop (label, info, value, ...) names its app.ui.strings key."""
        self.entries.append((component, props))
        return component

    def relabel(self, lang: str) -> list[dict]:
        """Updates that set every registered text in `lang`, in `components` order."""
        return [gr.update(**{prop: ui_text(key, lang) for prop, key in props.items()}) for _, props in self.entries]

    @property
    def components(self) -> list[Any]:
        return [component for component, _ in self.entries]


def labelled(field: RequestField) -> dict[str, str]:
    """prop -> app.ui.strings key of a table field's label and help line (for Labels)."""
    return {"label": field.label_key} | ({"info": field.info} if field.info else {})


def slider(L: Labels, name: str, settings: Settings) -> Any:
    """A table field as a slider: range from the engine's limits and the settings, default from the engine."""
    field = FIELD_BY_NAME[name]
    low, high = field_range(name, settings)
    props = labelled(field)
    value = min(max(field.default, low), high)
    component = gr.Slider(low, high, value=value, step=field.step, elem_id=field.dom_id,
                          **{prop: L.t(key) for prop, key in props.items()})
    return L(component, **props)


def choice(L: Labels, field: RequestField) -> Any:
    """A choice field as a dropdown (app.ui.choices labels its values)."""
    props = labelled(field)
    dropdown = gr.Dropdown(choice_options(field), value=field.default, elem_id=field.dom_id,
                           **{prop: L.t(key) for prop, key in props.items()})
    return L(dropdown, **props)


def table_input(L: Labels, field: RequestField, settings: Settings) -> Any:
    """The widget of a numeric or choice field: a dropdown for a choice field, else a slider."""
    return choice(L, field) if field.choices else slider(L, field.name, settings)
