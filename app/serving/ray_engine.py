"""The service's engine in Ray mode: the EngineProtocol over a Serve deployment handle.

The service's workers (one per replica) call `generate` as they would call the in-process engine; steps
stream back from the replica, a raised GenerationCancelled cancels the stream (the replica stops at its
next step), and the cluster's failures become the service's own errors.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Sequence

import ray
from ray import serve
from ray.exceptions import AuthenticationError, RayError
from ray.serve.exceptions import BackPressureError

from app.errors import ServiceError, queue_full
from app.previews import jpeg_images
from app.serving.events import ENGINE_ERROR, FAILED, RESULT, STEP
from app.serving.replica import DEPLOYMENT_NAME, build_replica_app
from app.settings import Settings
from model.errors import GenerationCancelled
from model.loading.layout import detect_layout
from model.loading.text_encoder import load_tokenizer
from model.network.text_encoder import prompt_token_ids
from model.request import EngineLimits, GenerationRequest, GenerationResult, StepCallback

logger = logging.getLogger(__name__)

APP_NAME = "z-image-turbo"
RAY_NAMESPACE = "z-image-turbo"
# Status codes for failures the replica explains itself.
FAILURE_STATUS = {"out_of_memory": 500, "internal_error": 500, "replica_failed": 503}
# How often the replica counts that /health/ready and /metrics show are refreshed (they never wait on Ray).
STATUS_REFRESH_SECONDS = 2.0
# How long the app waits for a cluster's head node to come up, and between tries.
CONNECT_SECONDS = 120.0
CONNECT_RETRY_SECONDS = 3.0


class RayEngine:
    """Engine replicas behind one handle; `describe` and `limits` come from a replica at connect time."""

    def __init__(self, handle: serve.handle.DeploymentHandle, settings: Settings):
        self._handle = handle
        self._settings = settings
        # Tokens are counted here, with the checkpoint's own tokenizer: a replica would answer only once it
        # has no image running (max_ongoing_requests=1), and its queue is the one backpressure counts.
        self._tokenizer = load_tokenizer(detect_layout(settings.weights_dir).tokenizer)
        self._info = dict(handle.describe.remote().result())
        self._limits: EngineLimits = handle.limits.remote().result()
        self._states: dict[str, int] = {}
        self._closed = threading.Event()
        self._refresh_states()
        threading.Thread(target=self._watch_states, name="ray-replica-status", daemon=True).start()

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        stream = None
        try:
            stream = self._handle.options(stream=True).generate.remote(request)
            for event in stream:
                if event[0] == STEP:
                    if on_step is not None:
                        progress, jpeg = event[1], event[2]
                        on_step(progress if jpeg is None else
                                dataclasses.replace(progress, preview=functools.partial(jpeg_images, jpeg)))
                elif event[0] == RESULT:
                    return event[1]
                elif event[0] == ENGINE_ERROR:
                    raise event[1]
                elif event[0] == FAILED:
                    raise ServiceError(event[1], status=FAILURE_STATUS[event[1]], detail=event[2])
        except GenerationCancelled:
            if stream is not None:
                stream.cancel()
            raise
        except BackPressureError:
            # Every replica busy and this caller's Serve queue full: the same answer as our own full queue.
            raise queue_full(self._settings.ray_max_queued_requests) from None
        except RayError as err:  # the replica died (killed, node lost): only this job fails
            logger.error("replica lost during a job: %s", err)
            raise ServiceError("replica_failed", status=503, detail=type(err).__name__) from None
        raise ServiceError("replica_failed", status=503, detail="the replica's stream ended without a result")

    def count_tokens(self, prompt: str) -> int:
        return len(prompt_token_ids(self._tokenizer, prompt))

    def describe(self) -> dict[str, Any]:
        return {**self._info, "serving": "ray"}

    def warmup(self, sizes: Sequence[tuple[int, int]] = ()) -> None:
        """Nothing to do: every replica warms itself up (at the configured sizes) before Serve routes jobs to it."""

    @property
    def limits(self) -> EngineLimits:
        return self._limits

    def replica_states(self) -> dict[str, int]:
        """Replicas by Serve state (RUNNING, STARTING, ...), as last read (at most a few seconds old)."""
        return dict(self._states)

    def close(self) -> None:
        """Delete the deployment so its GPUs are free for the next start."""
        self._closed.set()
        try:
            serve.delete(APP_NAME)
        except Exception as err:  # the cluster may already be gone; stopping must still finish
            logger.warning("could not delete the Serve application: %s", err)

    def _watch_states(self) -> None:
        while not self._closed.wait(STATUS_REFRESH_SECONDS):
            self._refresh_states()

    def _refresh_states(self) -> None:
        try:
            deployment = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
            self._states = {str(state): count for state, count in deployment.replica_states.items()}
        except Exception as err:  # keep the last counts; the next refresh may succeed
            logger.warning("could not read the replica status: %s", err)


def _connect(settings: Settings) -> None:
    """"" starts a private Ray instance with this machine's GPUs; otherwise join the running cluster,
    waiting for its head a while (supervisord starts the head and the app at the same time)."""
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            ray.init(address=settings.ray_address or None, namespace=RAY_NAMESPACE,
                     logging_level=settings.log_level.upper())
            return
        except ConnectionError as err:
            if _token_refused(err):  # retrying cannot help: the token or the mode is missing here
                raise ServiceError("ray_auth", status=503, address=settings.ray_address) from None
            if not settings.ray_address or time.monotonic() > deadline:
                raise
            logger.warning("Ray cluster at %r not reachable yet (%s); retrying", settings.ray_address, err)
            time.sleep(CONNECT_RETRY_SECONDS)


def _token_refused(err: BaseException) -> bool:
    """Whether the head refused us for a missing or wrong auth token. Ray wraps the refusal in a RuntimeError
    whose text carries the gRPC status, under the ConnectionError ray.init raises."""
    while err is not None:
        if isinstance(err, AuthenticationError) or "InvalidAuthToken" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def ray_engine_factory(settings: Settings):
    """A zero-argument loader (run in the service's worker): join or start Ray, deploy the replicas (Serve
    waits until each has loaded and warmed up its engine), and return the RayEngine."""

    def load() -> RayEngine:
        if not ray.is_initialized():
            _connect(settings)
        # No Serve HTTP proxy: our own FastAPI app is the one door; replicas are reached through handles.
        serve.start(http_options={"location": "NoServer"})
        logger.info("deploying %s-%s engine replicas (%s GPU each)", settings.ray_min_replicas,
                    settings.ray_max_replicas, settings.ray_gpus_per_replica)
        handle = serve.run(build_replica_app(settings), name=APP_NAME, route_prefix=None)
        return RayEngine(handle, settings)

    return load
