"""The app's own error type: a message key for app.i18n, an HTTP status and the offending field."""

from __future__ import annotations

from app.i18n import translate

ERROR_TYPES = {
    400: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    500: "server_error",
    503: "service_unavailable",
}


# Longest client value (`value`) an error message repeats; the rest is cut (a 2 MB "size" is not echoed back).
MAX_ECHOED_CHARS = 80
# Seconds a client told "busy" (429) should wait before trying again: about one Turbo image.
RETRY_AFTER_SECONDS = 5


def _clip(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_ECHOED_CHARS:
        return f"{value[:MAX_ECHOED_CHARS]}… ({len(value)} characters)"
    return value


class ServiceError(Exception):
    """An error every door can show: translated with `message(lang)`, mapped to `status`."""

    def __init__(self, key: str, status: int = 400, field: str | None = None, **params: object):
        self.key = key
        self.status = status
        self.field = field
        if "value" in params:
            params["value"] = _clip(params["value"])
        self.params = {"field": field, **params}
        super().__init__(translate(key, "en", **self.params))

    def message(self, lang: str = "en") -> str:
        """The human message in `lang` ("en" or "zh")."""
        return translate(self.key, lang, **self.params)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error: Retry-After on 429."""
        return {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 429 else {}

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def openai_body(self, lang: str = "en") -> dict:
        """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message(lang),
                "type": self.error_type,
                "param": self.field,
                "code": self.key,
            }
        }


def queue_full(size: int) -> ServiceError:
    return ServiceError("queue_full", status=429, size=size)


def out_of_range(field: str, value: object, low: object, high: object) -> ServiceError:
    return ServiceError("out_of_range", status=400, field=field, value=value, min=low, max=high)
