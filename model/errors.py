"""Errors the engine raises. Each carries a stable `code` so the app can translate it."""

from __future__ import annotations


class ZImageError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "engine_error"


class CheckpointError(ZImageError):
    """A weight file or folder is missing, corrupt, of another model, or mismatched."""

    code = "checkpoint"


class InvalidRequestError(ZImageError, ValueError):
    """A generation request asks for something the model cannot do; `field` names the culprit."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class GenerationCancelled(ZImageError):
    """The per-step callback asked to stop; no partial image is returned."""

    code = "cancelled"


class OutOfMemoryError(ZImageError):
    """The request does not fit in the device memory budget (estimated or actual)."""

    code = "out_of_memory"
