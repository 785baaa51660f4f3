"""Assembles the process: the service, REST and health routes, then Gradio mounted at "/" on one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import FrameType
from typing import AsyncIterator

import gradio as gr
import uvicorn
from fastapi import FastAPI

from app import __version__, api, edits, health, security, stream
from app.engine_loader import EngineFactory, engine_factory
from app.service import STOP_MARGIN_SECONDS, GenerationService
from app.settings import Settings
from app.ui.page import build_demo
from app.ui.strings import build_i18n

logger = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """uvicorn that tells the service about SIGTERM/SIGINT at once, not only after connections drain.

    The service then refuses new jobs and cancels the running one after the grace period, so the
    client waiting for it gets a 503 before uvicorn's own graceful timeout closes the connection.
    """

    def __init__(self, config: uvicorn.Config, service: GenerationService):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("stop requested: finishing the running image (grace %.0f s)",
                        self.service.settings.shutdown_grace_seconds)
            self.service.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> None:
    """Run the app with uvicorn until SIGTERM/SIGINT; returns after a graceful stop."""
    app = build_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        # log_config=None: uvicorn's loggers propagate to ours, so every line carries a timestamp.
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS) + 1,
    )
    GracefulServer(config, app.state.service).run()


def _backend_factory(settings: Settings) -> EngineFactory:
    """The in-process engine, or (serving = "ray") Engine replicas on a Ray cluster; Ray loads only then."""
    if settings.serving == "ray":
        from app.serving.ray_engine import ray_engine_factory

        return ray_engine_factory(settings)
    return engine_factory(settings)


def build_app(settings: Settings, load_engine: EngineFactory | None = None) -> FastAPI:
    """The FastAPI app with every door; the service starts and stops with the app's lifespan."""
    service = GenerationService(settings, load_engine or _backend_factory(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        # Runs after uvicorn stopped taking requests and the open ones were answered (on the signal,
        # GracefulServer already refused new jobs and gave the running one its grace period).
        await asyncio.to_thread(service.shutdown, min(settings.shutdown_grace_seconds, STOP_MARGIN_SECONDS))

    app = FastAPI(title="Z-Image-Turbo", version=__version__, lifespan=lifespan)
    app.state.service = service
    # Our routes first: the Gradio mount at "/" would otherwise shadow them.
    app.include_router(health.build_router(service))
    app.include_router(api.build_router(service))
    app.include_router(edits.build_edits_router(service))
    app.include_router(stream.build_stream_router(service))
    # Static: Gradio serves the output folder's PNGs (results, history) from where they are instead of
    # copying each into its cache.
    gr.set_static_paths([settings.output_dir.resolve()])
    security.install(app, settings)  # Host/Origin/JSON/API-key guard and upload-path check on every route
    translations = build_i18n()
    demo = build_demo(service, translations)
    if settings.mcp_server:
        from app.mcp_tools import add_mcp_tools  # off by default; Gradio then needs the `mcp` package

        add_mcp_tools(demo, service)
    # api_open=False: /gradio_api/run/... would call handlers directly, past every queue.
    demo.queue(api_open=False, default_concurrency_limit=None)
    return gr.mount_gradio_app(
        app, demo, path="/", i18n=translations, footer_links=["api", "gradio", "settings"],
        max_file_size=settings.max_upload_bytes, allowed_paths=[str(settings.output_dir.resolve())],
        # show_error=False: only our gr.Error messages reach clients, never a raw exception's text or paths.
        show_error=False, enable_monitoring=False, mcp_server=settings.mcp_server,
    )
