"""The Ray Serve deployment: one model.Engine per replica (per GPU), streaming step events for each job."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import Any, AsyncIterator

import ray
from ray import serve

from app.device_errors import free_device_memory, is_fatal_device_error, is_out_of_memory
from app.engine_loader import engine_factory
from app.previews import preview_due, preview_jpeg
from app.serving.events import ENGINE_ERROR, FAILED, RESULT, STEP, Event
from app.settings import REPO_ROOT, Settings
from model.errors import GenerationCancelled, ZImageError
from model.request import EngineLimits, GenerationRequest, StepProgress

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "EngineReplica"
# A replica that died while constructing is retried this often before the deployment counts as failed
# (missing weights would otherwise be retried for minutes).
CONSTRUCTOR_RETRIES = 3


class EngineReplica:
    """Loads and warms up the engine when Serve starts the replica; runs one job at a time."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._engine = engine_factory(settings)()
        if settings.warmup:
            self._engine.warmup(settings.warmup_size_list)
        # One engine thread: the GPU runs one image at a time, and a cancelled job's last step finishes
        # before the next job starts.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._device_error: str | None = None
        self._identity = _identity()
        logger.info("replica %s ready: %s", self._identity["replica"], self._engine.describe())

    def describe(self) -> dict[str, Any]:
        return dict(self._engine.describe())

    def limits(self) -> EngineLimits:
        return self._engine.limits

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes Serve replace the replica (a poisoned CUDA context)."""
        if self._device_error is not None:
            raise RuntimeError(f"device unusable: {self._device_error}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Step events while the engine runs, then one final event. Cancelling the stream (the caller's
        Stop, or the caller gone) stops the engine at its next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()
        previewed_at: float | None = None

        def on_step(progress: StepProgress) -> None:
            nonlocal previewed_at
            # The preview crosses to the app as the small JPEG the doors show, never as the step's latents
            # (megabytes of tensors a step). The replica cannot tell which door wants previews, so while the
            # `previews` setting is on it renders one at the doors' rate (a few ms each); the app drops the rest.
            jpeg = None
            now = time.monotonic()
            if self._settings.previews and preview_due(progress, previewed_at, now):
                images = progress.preview()
                if images:
                    jpeg, previewed_at = preview_jpeg(images), now
            step = dataclasses.replace(progress, preview=None)
            loop.call_soon_threadsafe(events.put_nowait, (STEP, step, jpeg))
            if stop.is_set():
                raise GenerationCancelled(f"cancelled at step {progress.step}")

        def run() -> None:
            loop.call_soon_threadsafe(events.put_nowait, self._run(request, on_step))

        self._pool.submit(run)
        try:
            while True:
                event = await events.get()
                yield event
                if event[0] != STEP:
                    return
        finally:
            stop.set()

    def _run(self, request: GenerationRequest, on_step: Any) -> Event:
        """The engine call; every outcome becomes a final event (nothing is raised across the boundary)."""
        out_of_memory = False
        try:
            result = self._engine.generate(request, on_step=on_step)
            return RESULT, dataclasses.replace(result, replica=self.identity())  # the recipe records it
        except ZImageError as err:  # invalid request, LoRA refused, does not fit, cancelled: the caller maps it
            return ENGINE_ERROR, err
        except Exception as err:
            if is_out_of_memory(err):
                out_of_memory = True
            elif is_fatal_device_error(err):
                logger.critical("replica %s: device unusable (%s); Serve replaces this replica",
                                self._identity["replica"], err)
                self._device_error = f"{type(err).__name__}: {err}"
                return FAILED, "replica_failed", self._device_error
            else:
                logger.exception("replica %s: generation failed", self._identity["replica"])
                return FAILED, "internal_error", type(err).__name__
        if out_of_memory:
            free_device_memory()  # outside the except block: the traceback no longer pins tensors
        return FAILED, "out_of_memory", ""


def _identity() -> dict[str, Any]:
    """Where this replica runs: recorded in every image's recipe and shown by /health/ready."""
    context = ray.get_runtime_context()
    return {"replica": serve.get_replica_context().replica_id.unique_id, "node": context.get_node_id(),
            "pid": os.getpid(), "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def replica_settings(settings: Settings) -> Settings:
    """The settings a replica gets: folders made absolute, since replicas do not share our working dir."""
    return dataclasses.replace(settings, weights_dir=settings.weights_dir.resolve(),
                               lora_dir=settings.lora_dir.resolve(), output_dir=settings.output_dir.resolve())


def build_replica_app(settings: Settings) -> serve.Application:
    """The Engine deployment as the settings describe it: GPUs per replica, fixed count or autoscaling bounds,
    and Serve's backpressure (one job per replica; `ray_max_queued_requests` waiting per caller)."""
    scaling: dict[str, Any]
    if settings.ray_min_replicas == settings.ray_max_replicas:
        scaling = {"num_replicas": settings.ray_max_replicas}
    else:
        scaling = {"autoscaling_config": {"min_replicas": settings.ray_min_replicas,
                                          "max_replicas": settings.ray_max_replicas,
                                          "target_ongoing_requests": 1,
                                          "upscale_delay_s": settings.ray_upscale_delay_seconds,
                                          "downscale_delay_s": settings.ray_downscale_delay_seconds}}
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT_NAME).options(
        **scaling, max_ongoing_requests=1, max_queued_requests=settings.ray_max_queued_requests,
        max_constructor_retry_count=CONSTRUCTOR_RETRIES, health_check_period_s=5, health_check_timeout_s=30,
        # The checkout must sit at the same path on every node (the venv too): replicas import app and model.
        ray_actor_options={"num_gpus": settings.ray_gpus_per_replica, "num_cpus": 1,
                           "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}},
    )
    return deployment.bind(replica_settings(settings))
