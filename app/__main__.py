"""`python -m app`: read the settings, log to stderr with timestamps, serve with uvicorn (SIGTERM is graceful)."""

from __future__ import annotations

import logging
import os
import signal
import sys

from app.server import serve
from app.settings import SettingsError, load_settings

logger = logging.getLogger("app")


def _stop_requested(signum: int, _frame: object) -> None:
    logger.info("received %s: stopped", signal.Signals(signum).name)


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as err:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO)
        logger.error("bad setting: %s", err)
        return 2
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Offline host: no telemetry calls from Gradio.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that was
    # installed before it; a no-op handler there turns a requested stop into exit status 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stop_requested)
    logger.info("serving on http://%s:%d (weights: %s)", settings.host, settings.port, settings.weights_dir)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
