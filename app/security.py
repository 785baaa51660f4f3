"""The HTTP guard in front of every route (REST, health, Gradio's page and API), one request at a time:

1. Host allow-list (DNS rebinding): loopback names, the bind address, `allowed_hosts`; on a wildcard bind
   (0.0.0.0 / ::) also any IP literal, since an attacker's rebinding name is never an IP literal.
2. No remote fetches through Gradio's /file=<url> and /proxy= routes (this app never serves remote files).
3. State-changing requests (POST, PUT, ...) from a browser page of another origin are refused unless that
   origin is in `cors_origins`; their bodies must be JSON (except Gradio's uploads, the image editor's strokes
   and our login form), so a `text/plain` form post from any web page cannot start a job without a preflight.
4. The API key (app.auth) when one is set; /health/live always stays open for the supervisor watchdog, and
   /health/ready and /metrics stay open to loopback clients (setup script, Docker HEALTHCHECK).
5. Gradio JSON bodies: every file object must name a trusted upload (app.uploads) before Gradio reads it.
Every response gets anti-framing and no-sniff headers. CORS itself is Starlette's CORSMiddleware with
`cors_origins` (empty by default), which also switches off Gradio's origin-reflecting CORS middleware.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import auth
from app.edits import EDITS_PATH
from app.errors import ServiceError
from app.i18n import language_from_header
from app.settings import Settings
from app.uploads import check_file_references

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Gradio's multipart routes (file upload, screen recording): not JSON, and they carry no file references.
MULTIPART_POSTS = frozenset({"/gradio_api/upload", "/gradio_api/process_recording"})
# Gradio's component server takes multipart bodies too: the image editor (the inpainting mask) uploads its
# strokes there as image bytes (bounded by max_file_size). JSON bodies to it are inspected like any other.
BLOB_POSTS = frozenset({"/gradio_api/component_server", "/gradio_api/component_server/"})
# POST bodies that are not JSON by design: those, the browser login form and OpenAI's multipart image edits
# (which carry image bytes, never server paths; Host, Origin and the API key still apply to all of them).
NON_JSON_POSTS = MULTIPART_POSTS | {auth.LOGIN_PATH, EDITS_PATH}
OPEN_PATHS = frozenset({"/health/live", auth.LOGIN_PATH, auth.LOGOUT_PATH})
# Read-only state that local tools poll without the key (setup script, Docker HEALTHCHECK, a local Prometheus);
# from any other client address they need the key like everything else.
LOOPBACK_OPEN_PATHS = frozenset({"/health/ready", "/metrics"})
GRADIO_PREFIX = "/gradio_api/"
REMOTE_FETCH_PREFIXES = ("/gradio_api/file=http:", "/gradio_api/file=https:", "/gradio_api/proxy=")
SECURITY_HEADERS = (("X-Frame-Options", "DENY"), ("Content-Security-Policy", "frame-ancestors 'none'"),
                    ("X-Content-Type-Options", "nosniff"))
# Bodies parsed in a worker thread above this size, so a big JSON document does not stall /health/live.
THREAD_PARSE_BYTES = 256 * 1024
MAX_ECHO_CHARS = 100


def split_list(text: str) -> tuple[str, ...]:
    """"a, b,,c" -> ("a", "b", "c"): the comma-separated list settings (env-variable friendly)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def host_name(header: str) -> str | None:
    """The name part of a Host header ("[::1]:7860" -> "::1", "Example:80" -> "example"), None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        name, closed, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
        return name if closed and (not rest or (rest.startswith(":") and port.isdigit())) and name else None
    name, _, port = value.partition(":")
    return name if name and (not port or port.isdigit()) else None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback_bind(host: str) -> bool:
    return host in LOOPBACK_NAMES or (is_ip_literal(host) and ipaddress.ip_address(host).is_loopback)


@dataclass(frozen=True)
class SecurityPolicy:
    """What the guard accepts, derived once from the settings."""

    hosts: frozenset[str]
    any_host: bool
    any_ip_literal: bool
    cors_origins: tuple[str, ...]
    api_key: str
    max_body: int
    output_dir: Path  # our own images: a client may name them as files (history -> reference image)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityPolicy:
        extra = {name.lower().strip("[]") for name in split_list(settings.allowed_hosts)}
        wildcard = settings.host in WILDCARD_BINDS
        bind = set() if wildcard else {settings.host.lower().strip("[]")}
        origins = tuple(origin.rstrip("/") for origin in split_list(settings.cors_origins))
        return cls(hosts=frozenset(LOOPBACK_NAMES | bind | (extra - {"*"})), any_host="*" in extra,
                   any_ip_literal=wildcard, cors_origins=origins, api_key=settings.api_key,
                   max_body=settings.max_upload_bytes, output_dir=settings.output_dir)

    def host_allowed(self, header: str) -> bool:
        name = host_name(header)
        if name is None:
            return False
        return self.any_host or name in self.hosts or (self.any_ip_literal and is_ip_literal(name))

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """Same origin as the page that was served (scheme://Host), or listed in cors_origins."""
        if origin.rstrip("/") in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()


class SecurityMiddleware:
    """Pure ASGI middleware (it must see Gradio's routes too, and re-feed the bodies it inspects)."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        lang = language_from_header(headers.get("accept-language"))
        if scope["type"] == "websocket":
            if self.refusal(scope, headers, lang) is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        refused = self.refusal(scope, headers, lang)
        if refused is None and self._inspects_body(scope):
            refused, receive = await self._checked_body(receive, lang)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers, lang: str) -> Response | None:
        """The response that refuses this request before any route runs, or None to let it through."""
        host = headers.get("host", "")
        path, method = scope["path"], scope.get("method", "GET")
        if not self.policy.host_allowed(host):
            return error_response(ServiceError("host_not_allowed", status=400, field="Host",
                                               host=host[:MAX_ECHO_CHARS]), lang)
        if path.lower().startswith(REMOTE_FETCH_PREFIXES):
            return error_response(ServiceError("untrusted_file", status=403, field="file"), lang)
        state_changing = method not in SAFE_METHODS or scope["type"] == "websocket"
        origin = headers.get("origin")
        if state_changing and origin is not None and not self.policy.origin_allowed(origin, host):
            return error_response(ServiceError("origin_not_allowed", status=403, field="Origin",
                                               origin=origin[:MAX_ECHO_CHARS]), lang)
        content_type = _content_type(headers)
        if state_changing and scope["type"] == "http" and path not in NON_JSON_POSTS \
                and content_type != "application/json" and not _blob_upload(path, content_type):
            return error_response(ServiceError("json_required", status=415, field="Content-Type",
                                               content_type=content_type[:MAX_ECHO_CHARS]), lang)
        if self.policy.api_key and not self._open(scope) and not self._authorized(headers):
            if method == "GET" and "text/html" in headers.get("accept", ""):
                return RedirectResponse(auth.LOGIN_PATH, status_code=303)
            return error_response(ServiceError("api_key_required", status=401, field="Authorization"), lang,
                                  {"WWW-Authenticate": "Bearer"})
        return None

    @staticmethod
    def _open(scope: Scope) -> bool:
        """Routes answered without the key: liveness, login, CORS preflights, local state polling."""
        client = (scope.get("client") or ("", 0))[0]
        return scope["path"] in OPEN_PATHS or scope.get("method") == "OPTIONS" or (
            scope["path"] in LOOPBACK_OPEN_PATHS and is_ip_literal(client) and ipaddress.ip_address(client).is_loopback)

    def _authorized(self, headers: Headers) -> bool:
        key = self.policy.api_key
        cookie = _cookie(headers.get("cookie", ""), auth.SESSION_COOKIE)
        return auth.bearer_valid(key, headers.get("authorization")) or auth.session_valid(key, cookie)

    @staticmethod
    def _inspects_body(scope: Scope) -> bool:
        path = scope["path"]
        return scope["method"] not in SAFE_METHODS and path.startswith(GRADIO_PREFIX) \
            and path not in MULTIPART_POSTS and not _blob_upload(path, _content_type(Headers(scope=scope)))

    async def _checked_body(self, receive: Receive, lang: str) -> tuple[Response | None, Receive]:
        """Read the whole (bounded) body, refuse untrusted file objects, and hand the same bytes on."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.policy.max_body:
                return error_response(ServiceError("upload_too_large", status=413, field="body", size=size,
                                                   limit=self.policy.max_body), lang), receive
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            document = await asyncio.to_thread(json.loads, body) if size > THREAD_PARSE_BYTES else json.loads(body)
        except (ValueError, RecursionError) as err:
            return error_response(ServiceError("invalid_json", detail=type(err).__name__), lang), receive
        try:
            check_file_references(document, self.policy.output_dir)
        except ServiceError as err:  # app.uploads logged the path that was asked for
            return error_response(err, lang, gradio_validation=True), receive
        return None, _replay(body, receive)


def error_response(err: ServiceError, lang: str = "en", headers: dict[str, str] | None = None,
                   gradio_validation: bool = False) -> JSONResponse:
    """Our OpenAI-shaped error; `gradio_validation` adds the 422 `detail` list gradio_client and the page show."""
    body: dict[str, Any] = err.openai_body(lang)
    if gradio_validation:
        body["detail"] = [{"__type__": "validate", "is_valid": False, "message": err.message(lang),
                           "parameter_name": err.field}]
    return JSONResponse(body, status_code=err.status, headers=headers)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: the client's disconnect, as the app expects

    return replay


def _content_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _blob_upload(path: str, content_type: str) -> bool:
    """A multipart body for the component server (image bytes, never server paths)."""
    return path in BLOB_POSTS and content_type == "multipart/form-data"


def _with_security_headers(send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS:
                headers.setdefault(name, value)
        await send(message)

    return sender


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def install(app: FastAPI, settings: Settings) -> None:
    """Put the guard, CORS and (with a key) the login routes on `app`; call before mounting Gradio."""
    policy = SecurityPolicy.from_settings(settings)
    if policy.api_key:
        app.include_router(auth.build_router(policy.api_key))
    elif not is_loopback_bind(settings.host):
        logger.warning("binding to %s without an api_key: anyone who can reach this port can use the server. "
                       "Set ZIMAGE_API_KEY (see README, Security).", settings.host)
    # Starlette's CORSMiddleware on the parent app also makes Gradio drop its own (origin-reflecting) one.
    app.add_middleware(CORSMiddleware, allow_origins=list(policy.cors_origins), allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(SecurityMiddleware, policy=policy)  # added last = outermost: runs first
