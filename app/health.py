"""Liveness, readiness and Prometheus routes: async, never queued, answered while the model loads."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.i18n import language_from_header, translate
from app.metrics import CONTENT_TYPE
from app.service import GenerationService


def build_router(service: GenerationService) -> APIRouter:
    """/health/live, /health/ready and /metrics for `service`."""
    router = APIRouter()
    watchdog = service.settings.watchdog_seconds

    @router.get("/health/live")
    async def live() -> JSONResponse:
        # async def: answered on the event loop even when every worker thread is busy.
        running_for = service.running_for()
        hung = running_for > watchdog
        broken = service.device_failed  # the CUDA context is unusable: only a restart helps
        body = {"status": "hung" if hung else "device_failed" if broken else "alive", "engine": service.engine_state,
                "model_loaded": service.ready, "running_for_seconds": round(running_for, 1),
                "watchdog_seconds": watchdog}
        return JSONResponse(body, status_code=503 if hung or broken else 200)

    @router.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        replicas = service.replica_states()
        if service.ready and replicas is not None:
            # Ray mode: ready while at least one replica serves; the counts show a shrunk or restarting pool.
            running = replicas.get("RUNNING", 0)
            body = {"status": "ready" if running else "no_replicas", "engine": service.engine_state,
                    "model": service.engine_info, "replicas": replicas}
            if not running:
                lang = language_from_header(request.headers.get("accept-language"))
                body["message"] = translate("no_replicas", lang, replicas=_states(replicas),
                                            gpus=f"{service.settings.ray_gpus_per_replica:g}")
            return JSONResponse(body, status_code=200 if running else 503)
        if service.ready:
            return JSONResponse({"status": "ready", "engine": service.engine_state, "model": service.engine_info})
        lang = language_from_header(request.headers.get("accept-language"))
        error = service.unavailable_error
        message = error.message(lang) if error else translate("loading", lang)
        return JSONResponse({"status": service.engine_state, "message": message}, status_code=503)

    @router.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)

    return router


def _states(replicas: dict[str, int]) -> str:
    """Replica counts as "STARTING 2, UNHEALTHY 1" ("none" for an empty pool)."""
    return ", ".join(f"{state} {count}" for state, count in sorted(replicas.items())) or "none"
