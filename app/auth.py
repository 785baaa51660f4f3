"""Optional API key (setting api_key / ZIMAGE_API_KEY): Bearer header for programs, a login page for browsers.

One mechanism for every door, checked by app.security before any route runs: REST and the openai SDK send
`Authorization: Bearer <key>`, gradio_client sends the same header via `headers=`, and a browser logs in
once at /login and then carries a signed session cookie. Gradio's own `auth=` is not used: it only knows
its cookie, so a Bearer-only gradio_client would be refused by it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.i18n import language_from_header, translate

SESSION_COOKIE = "zimage_session"
SESSION_SECONDS = 7 * 24 * 3600
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
MAX_LOGIN_BODY = 4096


def _signature(key: str, expires: int) -> str:
    return hmac.new(key.encode(), f"zimage-session:{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(key: str, now: float | None = None) -> str:
    """A cookie value valid for SESSION_SECONDS; changing the key invalidates every session."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_signature(key, expires)}"


def session_valid(key: str, value: str | None, now: float | None = None) -> bool:
    expires_text, _, signature = (value or "").partition(".")
    if not expires_text.isdigit():
        return False
    expires = int(expires_text)
    fresh = expires > (now if now is not None else time.time())
    return fresh and hmac.compare_digest(signature, _signature(key, expires))


def bearer_valid(key: str, authorization: str | None) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def login_page(lang: str, failed: bool) -> str:
    error = f'<p class="error">{html.escape(translate("login_failed", lang))}</p>' if failed else ""
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>Z-Image-Turbo · 登录 / Log in</title>
<style>body{{font-family:sans-serif;max-width:26rem;margin:4rem auto}}input{{width:100%;padding:.5rem;margin:.5rem 0}}
.error{{color:#b00}}</style></head>
<body><h1>Z-Image-Turbo</h1>
<form method="post" action="{LOGIN_PATH}">
<label for="api_key">访问密钥 / API key</label>
<input id="api_key" name="api_key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">登录 / Log in</button></form>{error}</body></html>"""


def build_router(key: str) -> APIRouter:
    """/login (form and submit) and /logout for the browser; the key never appears in a page or a log."""
    router = APIRouter()

    @router.get(LOGIN_PATH, include_in_schema=False)
    async def login_form(request: Request) -> HTMLResponse:
        return HTMLResponse(login_page(language_from_header(request.headers.get("accept-language")), False))

    @router.post(LOGIN_PATH, include_in_schema=False)
    async def login_submit(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                break
        given = parse_qs(body[:MAX_LOGIN_BODY].decode("utf-8", "replace")).get("api_key", [""])[0]
        if not hmac.compare_digest(given.encode(), key.encode()):
            lang = language_from_header(request.headers.get("accept-language"))
            return HTMLResponse(login_page(lang, True), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_value(key), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @router.get(LOGOUT_PATH, include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router
